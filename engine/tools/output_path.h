// Checks of a command's --out made before any work: a run of hours must not end on a folder it
// cannot write, and no command writes over its own input.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace qlorad {

// INVALID_ARGUMENT where `out` is an existing file (not a folder), the same file or folder as
// one of `inputs`, or in a folder this process cannot write.
inline absl::Status CheckOutput(const std::string& out, std::initializer_list<std::string> inputs) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(out, ec) && !fs::is_directory(out, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("--out ", out, " exists and is not a folder"));
  }
  // A link to nowhere: exists() is false, yet no folder can be made there.
  if (fs::is_symlink(fs::symlink_status(out, ec)) && !fs::exists(out, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("--out ", out, " is a link to ",
                                                   fs::read_symlink(out, ec).string(),
                                                   ", which does not exist"));
  }
  for (const std::string& input : inputs) {
    if (fs::equivalent(out, input, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--out ", out, " is the input ", input, ": it would be written over"));
    }
  }
  // The folder itself where it exists, else the nearest folder above it that does.
  fs::path where = fs::absolute(out, ec);
  while (!where.empty() && !fs::exists(where, ec) && where != where.parent_path()) {
    where = where.parent_path();
  }
  // out = notes.txt/adapter: the nearest existing path is a file, which passed access().
  if (!fs::is_directory(where, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out ", out, ": ", where.string(), " is not a folder"));
  }
  if (::access(where.c_str(), W_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--out ", out, ": cannot write in ",
                                                   where.string(), ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace qlorad
