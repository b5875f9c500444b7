// Safetensors files: u64 little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the tensor data.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "engine/mapped_file.h"

namespace qlorad {

struct SafetensorsEntry {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping
  size_t bytes = 0;
  int64_t numel() const;
};

// A validated, memory-mapped safetensors file. Thread-compatible (read-only after Open).
class SafetensorsFile {
 public:
  // Fails with INVALID_ARGUMENT naming the file (and tensor) when the header is malformed, an
  // offset points outside the file, or a size does not match dtype x shape.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::map<std::string, SafetensorsEntry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_->path(); }
  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }
  absl::StatusOr<const SafetensorsEntry*> Get(const std::string& name) const;
  // Converts F32/F16/BF16 data to float32.
  absl::StatusOr<std::vector<float>> ReadF32(const std::string& name) const;

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, SafetensorsEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Converts an F32/F16/BF16 entry to float32.
absl::StatusOr<std::vector<float>> EntryToF32(const SafetensorsEntry& e, const std::string& name);

// Builds a safetensors file in memory, tensors in insertion order (aligned to 8 bytes).
class SafetensorsWriter {
 public:
  void Add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
           size_t bytes);
  void AddF32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v);
  // Stored as BF16 / F16 converted from float32.
  void AddF32As(const std::string& name, DType dtype, std::vector<int64_t> shape,
                const std::vector<float>& v);
  void SetMetadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  absl::Status WriteTo(const std::string& path) const;
  std::string Serialize() const;

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<Pending> pending_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace qlorad
