// Read-only memory map of a whole file (RAII). Checkpoints can be many gigabytes; mapping them
// lets the loaders convert one tensor at a time without reading the file into memory first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace qlorad {

class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

// Reads a whole (small) file, e.g. a JSON config.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);
// Writes through a temporary file and a rename, so a crash never leaves a half-written file.
absl::Status WriteStringToFile(const std::string& path, const std::string& contents);

}  // namespace qlorad
