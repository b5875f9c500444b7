#include <filesystem>

#include "absl/strings/str_cat.h"
#include "server/grpc/call.h"
#include "server/grpc/services.h"

namespace qlorad::server {
namespace fs = std::filesystem;

grpc::Status AdminServiceImpl::BackupDatabase(grpc::ServerContext* c,
                                              const v1::BackupDatabaseRequest* req,
                                              v1::BackupDatabaseResponse* out) {
  Call call(c, "BackupDatabase", *node_);
  if (absl::Status s = call.AuthenticateAdmin(); !s.ok()) return call.Finish(s);
  fs::path path(req->path());
  if (!path.has_filename()) path = path.parent_path();  // "/backups/1/" names the folder 1
  if (req->path().empty() || !path.is_absolute()) {
    return call.Finish(absl::InvalidArgumentError("path: an absolute server-side path is needed"));
  }
  std::error_code ec;
  if (fs::exists(path, ec)) {
    return call.Finish(absl::AlreadyExistsError(
        absl::StrCat("path: ", req->path(), " exists; backups go to a new folder")));
  }
  // RocksDB makes only the last folder: the ones above it (a backups folder on a new node)
  // are made here.
  if (fs::create_directories(path.parent_path(), ec); ec) {
    return call.Finish(absl::FailedPreconditionError(
        absl::StrCat("path: cannot create ", path.parent_path().string(), ": ", ec.message())));
  }
  if (absl::Status s = node_->db->Checkpoint(path.string()); !s.ok()) return call.Finish(s);
  int64_t bytes = 0;
  for (const auto& entry : fs::recursive_directory_iterator(path, ec)) {
    if (entry.is_regular_file(ec)) bytes += static_cast<int64_t>(entry.file_size(ec));
  }
  out->set_path(req->path());
  out->set_bytes(bytes);
  return call.Finish(absl::OkStatus());
}

}  // namespace qlorad::server
