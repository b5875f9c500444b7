#include "client/commands/adapter_files.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/cli/errors.h"

namespace qlorad::ctl {
namespace {

bool SafeFileName(const std::string& name) {
  return !name.empty() && name != "." && !absl::StrContains(name, "/") &&
         !absl::StrContains(name, "\\") && !absl::StrContains(name, "..") &&
         name.find('\0') == std::string::npos;
}

}  // namespace

absl::StatusOr<AdapterFileWriter> AdapterFileWriter::Create(std::string directory) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) {
    return LocalError(absl::StrCat("cannot create directory '", directory, "': ", error.message()));
  }
  return AdapterFileWriter(std::move(directory));
}

absl::Status AdapterFileWriter::Add(const v1::AdapterFileChunk& chunk) {
  if (name_.empty()) {
    if (!SafeFileName(chunk.file_name())) {
      return LocalError(
          absl::StrCat("the server sent an unsafe file name '", chunk.file_name(), "'"));
    }
    std::string path = (std::filesystem::path(directory_) / chunk.file_name()).string();
    for (const File& file : files_) {
      if (file.path == path) {
        return LocalError(absl::StrCat("the server sent '", chunk.file_name(), "' twice"));
      }
    }
    out_.open(path, std::ios::binary | std::ios::trunc);
    if (!out_) {
      return LocalError(absl::StrCat("cannot create '", path, "': ", std::strerror(errno)));
    }
    name_ = chunk.file_name();
    current_ = File{path, 0};
  } else if (!chunk.file_name().empty() && chunk.file_name() != name_) {
    return LocalError(
        absl::StrCat("the server started '", chunk.file_name(), "' before '", name_, "' ended"));
  }
  out_.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
  current_.bytes += static_cast<int64_t>(chunk.data().size());
  if (chunk.end_of_file()) out_.close();
  if (!out_) {
    return LocalError(absl::StrCat("cannot write '", current_.path, "': ", std::strerror(errno)));
  }
  if (chunk.end_of_file()) {
    files_.push_back(current_);
    name_.clear();
  }
  return absl::OkStatus();
}

absl::Status AdapterFileWriter::Finish() {
  if (name_.empty()) return absl::OkStatus();
  return LocalError(absl::StrCat("the download ended inside '", name_, "'"));
}

void AdapterFileWriter::Abandon() {
  if (name_.empty()) return;
  out_.close();
  std::error_code ignored;
  std::filesystem::remove(current_.path, ignored);
  name_.clear();
}

}  // namespace qlorad::ctl
