#include "engine/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace qlorad {

namespace {

// A descriptor of `path` and its size, or an error: only a regular file is read. A FIFO would
// block the open (O_NONBLOCK) or the read for ever, a device such as /dev/zero never end, and
// both are a path away in a model registration.
absl::StatusOr<int> OpenRegularFile(const std::string& path, size_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  *size = static_cast<size_t>(st.st_size);
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  size_t size = 0;
  auto fd = OpenRegularFile(path, &size);
  if (!fd.ok()) return fd.status();
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, *fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(*fd);
      return absl::InternalError(absl::StrCat("cannot map ", path, ": ", std::strerror(err)));
    }
    data = static_cast<const uint8_t*>(p);
  }
  ::close(*fd);  // The mapping stays valid after the descriptor is closed.
  return std::unique_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  size_t size = 0;
  auto fd = OpenRegularFile(path, &size);
  if (!fd.ok()) return fd.status();
  std::string out;
  out.resize(size);
  size_t have = 0;
  while (true) {  // to the end, which may have moved since the stat
    if (have == out.size()) out.resize(out.size() + 4096);
    const ssize_t n = ::read(*fd, out.data() + have, out.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(*fd);
      return absl::DataLossError(absl::StrCat("error reading ", path, ": ", std::strerror(err)));
    }
    if (n == 0) break;
    have += static_cast<size_t>(n);
  }
  ::close(*fd);
  out.resize(have);
  return out;
}

absl::Status WriteStringToFile(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp));
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.flush();
    if (!out) return absl::DataLossError(absl::StrCat("error writing ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace qlorad
