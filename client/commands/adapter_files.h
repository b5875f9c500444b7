// Writes the files of a DownloadAdapter stream into a directory. The names come from the
// server and are trusted only as plain file names: one containing '/' or ".." is refused.
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

  // Creates `directory` (and its parents) when missing.
  static absl::StatusOr<AdapterFileWriter> Create(std::string directory);

  // Appends the chunk to its file, opening the file on its first chunk and closing it on
  // end_of_file. Errors: an unsafe name, a new file before the last one ended, a file sent
  // twice, a failed write.
  absl::Status Add(const v1::AdapterFileChunk& chunk);
  // After the stream ended: an error when a file is still open (its end never came).
  absl::Status Finish();
  // After an error: removes the file being written, keeping the ones completed.
  void Abandon();

  const std::vector<File>& files() const { return files_; }

 private:
  explicit AdapterFileWriter(std::string directory) : directory_(std::move(directory)) {}

  std::string directory_;
  std::ofstream out_;
  std::string name_;  // of the open file; empty when none is open
  File current_;
  std::vector<File> files_;
};

}  // namespace qlorad::ctl
