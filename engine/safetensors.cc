#include "engine/safetensors.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlorad {
namespace {

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": invalid safetensors file: ", what));
}

}  // namespace

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto out = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  ASSIGN_OR_RETURN(out->file_, MappedFile::Open(path));
  const uint8_t* base = out->file_->data();
  const size_t size = out->file_->size();
  if (size < 8) return Bad(path, "shorter than its 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > size - 8) {
    return Bad(path, absl::StrCat("header length ", header_len, " exceeds file size ", size));
  }
  nlohmann::json header = nlohmann::json::parse(
      reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + header_len),
      /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return Bad(path, "header is not a JSON object");
  const uint8_t* data_begin = base + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return Bad(path, "__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return Bad(path, absl::StrCat("__metadata__.", k, " is not a string"));
        out->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") || !value["dtype"].is_string() ||
        !value.contains("shape") || !value["shape"].is_array() || !value.contains("data_offsets") ||
        !value["data_offsets"].is_array() || value["data_offsets"].size() != 2) {
      return Bad(path, absl::StrCat("tensor '", name, "' lacks dtype, shape or data_offsets"));
    }
    SafetensorsEntry e;
    auto dtype = DTypeFromName(value["dtype"].get<std::string>());
    if (!dtype.ok())
      return Bad(path, absl::StrCat("tensor '", name, "': ", dtype.status().message()));
    e.dtype = *dtype;
    int64_t numel = 1;
    for (const auto& d : value["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return Bad(path, absl::StrCat("tensor '", name, "' has a bad shape"));
      }
      e.shape.push_back(d.get<int64_t>());
      if (e.shape.back() != 0 && numel > std::numeric_limits<int64_t>::max() / e.shape.back()) {
        return Bad(path, absl::StrCat("tensor '", name, "' shape overflows"));
      }
      numel *= e.shape.back();
    }
    const auto& off = value["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return Bad(path, absl::StrCat("tensor '", name, "' has bad data_offsets"));
    }
    const uint64_t begin = off[0].get<uint64_t>();
    const uint64_t end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Bad(path, absl::StrCat("tensor '", name, "' data_offsets [", begin, ", ", end,
                                    ") lie outside the ", data_size, "-byte data section"));
    }
    // Divided, not multiplied: numel * size can wrap to the byte count of a tiny range.
    const uint64_t elem = DTypeSize(e.dtype);
    if ((end - begin) % elem != 0 || (end - begin) / elem != static_cast<uint64_t>(numel)) {
      return Bad(path, absl::StrCat("tensor '", name, "' holds ", end - begin, " bytes but its ",
                                    numel, " elements of ", elem, " bytes need more or fewer"));
    }
    e.data = data_begin + begin;
    e.bytes = end - begin;
    out->tensors_[name] = std::move(e);
  }
  return out;
}

absl::StatusOr<const SafetensorsEntry*> SafetensorsFile::Get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(path(), ": no tensor named '", name, "'"));
  }
  return &it->second;
}

absl::StatusOr<std::vector<float>> EntryToF32(const SafetensorsEntry& e, const std::string& name) {
  if (e.dtype != DType::kF32 && e.dtype != DType::kF16 && e.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' has dtype ", DTypeName(e.dtype), "; expected F32, F16 or BF16"));
  }
  const int64_t n = e.numel();
  std::vector<float> out(n);
  switch (e.dtype) {
    case DType::kF32:
      std::memcpy(out.data(), e.data, n * 4);
      break;
    case DType::kF16:
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, e.data + 2 * i, 2);
        out[i] = e.dtype == DType::kF16 ? F16ToF32(v) : Bf16ToF32(v);
      }
      break;
    default:
      break;  // refused above
  }
  return out;
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadF32(const std::string& name) const {
  ASSIGN_OR_RETURN(const SafetensorsEntry* e, Get(name));
  return EntryToF32(*e, name);
}

void SafetensorsWriter::Add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                            const void* data, size_t bytes) {
  pending_.push_back(
      {name, dtype, std::move(shape), std::string(static_cast<const char*>(data), bytes)});
}

void SafetensorsWriter::AddF32(const std::string& name, std::vector<int64_t> shape,
                               const std::vector<float>& v) {
  Add(name, DType::kF32, std::move(shape), v.data(), v.size() * 4);
}

void SafetensorsWriter::AddF32As(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                 const std::vector<float>& v) {
  if (dtype == DType::kF32) return AddF32(name, std::move(shape), v);
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    h[i] = dtype == DType::kF16 ? F32ToF16(v[i]) : F32ToBf16(v[i]);
  Add(name, dtype, std::move(shape), h.data(), h.size() * 2);
}

std::string SafetensorsWriter::Serialize() const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const Pending& p : pending_) {
    header[p.name] = {{"dtype", DTypeName(p.dtype)},
                      {"shape", p.shape},
                      {"data_offsets", {offset, offset + p.bytes.size()}}};
    offset += p.bytes.size();
  }
  std::string json = header.dump();
  // Pad the header with spaces so the data section starts 8-byte aligned.
  while ((json.size() + 8) % 8 != 0) json.push_back(' ');
  std::string out;
  out.reserve(8 + json.size() + offset);
  uint64_t len = json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xFF));
  out += json;
  for (const Pending& p : pending_) out += p.bytes;
  return out;
}

absl::Status SafetensorsWriter::WriteTo(const std::string& path) const {
  return WriteStringToFile(path, Serialize());
}

}  // namespace qlorad
