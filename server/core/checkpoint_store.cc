#include "server/core/checkpoint_store.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "engine/mapped_file.h"
#include "engine/status_macros.h"

namespace qlorad::core {
namespace fs = std::filesystem;
using storage::Family;
using storage::StoreKey;

absl::Status CheckpointStore::Save(const std::string& tenant, const std::string& job,
                                   const std::string& dir) {
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant, job}));
  storage::WriteSet w;
  w.DeletePrefix(Family::kCheckpoints, prefix + "/");
  std::error_code ec;
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file()) continue;
    ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(entry.path().string()));
    ASSIGN_OR_RETURN(std::string key, StoreKey({tenant, job, entry.path().filename().string()}));
    w.Put(Family::kCheckpoints, key, bytes);
    ++files;
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  if (files == 0) return absl::InternalError(absl::StrCat("checkpoint folder ", dir, " is empty"));
  return db_->Write(w);
}

absl::StatusOr<bool> CheckpointStore::Restore(const std::string& tenant, const std::string& job,
                                              const std::string& dir) const {
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant, job}));
  prefix += "/";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  int files = 0;
  absl::Status write_status;
  RETURN_IF_ERROR(
      db_->Scan(Family::kCheckpoints, prefix, [&](std::string_view key, std::string_view value) {
        const std::string name(key.substr(prefix.size()));
        std::ofstream out(fs::path(dir) / name, std::ios::binary | std::ios::trunc);
        out.write(value.data(), static_cast<std::streamsize>(value.size()));
        if (!out) {
          write_status = absl::InternalError(absl::StrCat("cannot write ", dir, "/", name));
          return false;
        }
        ++files;
        return true;
      }));
  RETURN_IF_ERROR(write_status);
  return files > 0;
}

absl::Status CheckpointStore::Delete(const std::string& tenant, const std::string& job) {
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant, job}));
  storage::WriteSet w;
  w.DeletePrefix(Family::kCheckpoints, prefix + "/");
  return db_->Write(w);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> CheckpointStore::List() const {
  // One key per job: a scan reads the value of each key it lands on, and a checkpoint's later
  // files (the optimizer moments) are large. A job's first file is adapter_config.json, small.
  std::vector<std::pair<std::string, std::string>> out;
  std::string resume_after;
  while (true) {
    bool found = false;
    RETURN_IF_ERROR(db_->Scan(
        Family::kCheckpoints, "",
        [&](std::string_view key, std::string_view) {
          const size_t a = key.find('/');
          const size_t b = a == std::string_view::npos ? a : key.find('/', a + 1);
          if (b == std::string_view::npos) return true;  // not a checkpoint file's key
          out.emplace_back(std::string(key.substr(0, a)),
                           std::string(key.substr(a + 1, b - a - 1)));
          // "<tenant>/<job>0" sorts after every "<tenant>/<job>/<file>" and before any later
          // job's keys; no key is ever exactly it (keys have three parts).
          resume_after = std::string(key.substr(0, b)) + "0";
          found = true;
          return false;
        },
        resume_after));
    if (!found) return out;
  }
}

}  // namespace qlorad::core
