#include "client/commands/adapter_files.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/cli/errors.h"

namespace qlorad::ctl {
namespace {

// The Python client's too: each cleans up what the other left.
constexpr char kStagingPrefix[] = ".qlorad-download-";

bool SafeFileName(const std::string& name) {
  return !name.empty() && name != "." && !absl::StrContains(name, "/") &&
         !absl::StrContains(name, "\\") && !absl::StrContains(name, "..") &&
         name.find('\0') == std::string::npos;
}

// Staging folders of downloads killed outright (Ctrl-C: no destructor ran) stay behind; one
// untouched for an hour (neither the folder nor a file in it written to) is no download in
// progress any more, and goes.
void RemoveAbandonedStaging(const std::string& directory) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto cutoff = fs::file_time_type::clock::now() - std::chrono::hours(1);
  for (const auto& entry : fs::directory_iterator(directory, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kStagingPrefix, 0) != 0 || !entry.is_directory(ec)) continue;
    fs::file_time_type newest = entry.last_write_time(ec);
    if (ec) continue;
    for (const auto& file : fs::directory_iterator(entry.path(), ec)) {
      newest = std::max(newest, file.last_write_time(ec));
    }
    if (!ec && newest < cutoff) fs::remove_all(entry.path(), ec);
  }
}

}  // namespace

absl::StatusOr<AdapterFileWriter> AdapterFileWriter::Create(std::string directory) {
  std::error_code error;
  // The highest folder this download makes: a failed download takes it away again (empty).
  std::filesystem::path created;
  for (std::filesystem::path p = std::filesystem::absolute(directory, error);
       !p.empty() && !std::filesystem::exists(p, error) && p != p.parent_path();
       p = p.parent_path()) {
    created = p;
  }
  std::filesystem::create_directories(directory, error);
  if (error) {
    return LocalError(absl::StrCat("cannot create directory '", directory, "': ", error.message()));
  }
  RemoveAbandonedStaging(directory);
  // In the directory itself, so that the final moves are renames on one filesystem.
  std::string pattern =
      (std::filesystem::path(directory) / (std::string(kStagingPrefix) + "XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) {
    return LocalError(absl::StrCat("cannot create a staging folder in '", directory,
                                   "': ", std::strerror(errno)));
  }
  AdapterFileWriter writer(std::move(directory), std::move(pattern));
  writer.created_ = created.string();
  return writer;
}

AdapterFileWriter::AdapterFileWriter(AdapterFileWriter&& other) noexcept
    : directory_(std::move(other.directory_)),
      staging_(std::exchange(other.staging_, std::string())),
      out_(std::move(other.out_)),
      name_(std::move(other.name_)),
      current_(std::move(other.current_)),
      files_(std::move(other.files_)),
      created_(std::exchange(other.created_, std::string())) {}

AdapterFileWriter::~AdapterFileWriter() { Abandon(); }

absl::Status AdapterFileWriter::Add(const v1::AdapterFileChunk& chunk) {
  if (name_.empty()) {
    if (!SafeFileName(chunk.file_name())) {
      return LocalError(
          absl::StrCat("the server sent an unsafe file name '", chunk.file_name(), "'"));
    }
    for (const File& file : files_) {
      if (std::filesystem::path(file.path).filename() == chunk.file_name()) {
        return LocalError(absl::StrCat("the server sent '", chunk.file_name(), "' twice"));
      }
    }
    std::string path = (std::filesystem::path(staging_) / chunk.file_name()).string();
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
  if (!name_.empty()) {
    return LocalError(absl::StrCat("the download ended inside '", name_, "'"));
  }
  if (files_.empty()) return LocalError("the download came without files");
  for (File& file : files_) {
    const std::filesystem::path staged = file.path;
    const std::string final_path = (std::filesystem::path(directory_) / staged.filename()).string();
    std::error_code error;
    std::filesystem::rename(staged, final_path, error);
    if (error) {
      return LocalError(absl::StrCat("cannot move '", staged.string(), "' to '", final_path,
                                     "': ", error.message()));
    }
    file.path = final_path;
  }
  created_.clear();  // the directory holds the adapter now
  Abandon();         // the staging folder, empty now
  return absl::OkStatus();
}

void AdapterFileWriter::Abandon() {
  if (out_.is_open()) out_.close();
  name_.clear();
  if (staging_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(staging_, ignored);
  staging_.clear();
  // Folders this download made, from the directory up to the highest, while empty: a download
  // that failed leaves no empty folder behind.
  if (created_.empty()) return;
  for (std::filesystem::path p = std::filesystem::absolute(directory_, ignored);
       std::filesystem::remove(p, ignored) && p != created_; p = p.parent_path()) {
  }
  created_.clear();
}

}  // namespace qlorad::ctl
