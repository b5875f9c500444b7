// Writes the files of a DownloadAdapter stream into a directory. The names come from the
// server and are trusted only as plain file names: one containing '/' or ".." is refused.
// The files arrive in a hidden staging folder inside the directory and move into place only
// once the whole download has come (Finish): a download cut short leaves the directory's files
// as they were, so an older adapter's files there are never mixed with this one's. (One killed
// outright, by Ctrl-C, also leaves its .qlorad-download-* folder behind; the final names are
// untouched; the next download into the directory removes such a folder once it is an hour old.)
// Not thread-safe.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "qlorad/v1/adapters.pb.h"

namespace qlorad::ctl {

class AdapterFileWriter {
 public:
  struct File {
    std::string path;
    int64_t bytes = 0;
  };

  // Creates `directory` (and its parents) when missing, and the staging folder in it.
  static absl::StatusOr<AdapterFileWriter> Create(std::string directory);
  AdapterFileWriter(AdapterFileWriter&& other) noexcept;
  AdapterFileWriter& operator=(AdapterFileWriter&&) = delete;
  ~AdapterFileWriter();  // removes the staging folder and what is left in it

  // Appends the chunk to its staged file, opening the file on its first chunk and closing it on
  // end_of_file. Errors: an unsafe name, a new file before the last one ended, a file sent
  // twice, a failed write.
  absl::Status Add(const v1::AdapterFileChunk& chunk);
  // After the stream ended OK: moves the staged files into the directory. An error when a file
  // is still open (its end never came), when none came, or when a move fails.
  absl::Status Finish();
  // After an error: drops everything staged; the directory keeps what it held before, and a
  // directory this download made is removed (while empty).
  void Abandon();

  // The files in the directory, once Finish succeeded.
  const std::vector<File>& files() const { return files_; }

 private:
  AdapterFileWriter(std::string directory, std::string staging)
      : directory_(std::move(directory)), staging_(std::move(staging)) {}

  std::string directory_;
  std::string staging_;  // empty once removed
  std::ofstream out_;
  std::string name_;  // of the open file; empty when none is open
  File current_;
  std::vector<File> files_;
  std::string created_;  // the highest folder Create made; empty once kept (Finish) or removed
};

}  // namespace qlorad::ctl
