// A RocksDB file system that counts the bytes read from blob files (where large values live),
// for tests of what a scan or a store's listing reads.
#pragma once

#include <rocksdb/file_system.h>

#include <atomic>
#include <memory>
#include <string>

namespace qlorad::storage {

class BlobReadCountingDisk : public rocksdb::FileSystemWrapper {
 public:
  BlobReadCountingDisk() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "BlobReadCountingDisk"; }
  std::atomic<int64_t> blob_bytes_read{0};

  rocksdb::IOStatus NewRandomAccessFile(const std::string& name,
                                        const rocksdb::FileOptions& options,
                                        std::unique_ptr<rocksdb::FSRandomAccessFile>* file,
                                        rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewRandomAccessFile(name, options, file, dbg);
    if (s.ok() && name.size() > 5 && name.substr(name.size() - 5) == ".blob") {
      *file = std::make_unique<File>(std::move(*file), this);
    }
    return s;
  }

 private:
  class File : public rocksdb::FSRandomAccessFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSRandomAccessFile> file, BlobReadCountingDisk* disk)
        : FSRandomAccessFileOwnerWrapper(std::move(file)), disk_(disk) {}
    rocksdb::IOStatus Read(uint64_t offset, size_t n, const rocksdb::IOOptions& o,
                           rocksdb::Slice* result, char* scratch,
                           rocksdb::IODebugContext* dbg) const override {
      disk_->blob_bytes_read += static_cast<int64_t>(n);
      return FSRandomAccessFileOwnerWrapper::Read(offset, n, o, result, scratch, dbg);
    }
    rocksdb::IOStatus MultiRead(rocksdb::FSReadRequest* reqs, size_t num_reqs,
                                const rocksdb::IOOptions& o,
                                rocksdb::IODebugContext* dbg) override {
      for (size_t i = 0; i < num_reqs; ++i) disk_->blob_bytes_read += reqs[i].len;
      return FSRandomAccessFileOwnerWrapper::MultiRead(reqs, num_reqs, o, dbg);
    }

   private:
    BlobReadCountingDisk* disk_;
  };
};

}  // namespace qlorad::storage
