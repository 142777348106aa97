// SlabFile: one preallocated data file of the SSD tier ("slab-000003.kvt"), opened O_DIRECT. RAII owner
// of its descriptor. Shared (shared_ptr) by the tier and by every I/O in flight on it, so a slab that is
// dropped by a capacity shrink stays open until its last I/O has completed, and its file is unlinked
// only then.
//
// Thread-safety: immutable after Open except MarkForDeletion (atomic).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace kvtier {

class SlabFile {
 public:
  // Opens or creates `path` and makes it exactly `bytes` long, allocating the blocks (fallocate) so that
  // writes cannot fail for lack of space later. RESOURCE_EXHAUSTED when the filesystem is full. Without
  // O_DIRECT support (tmpfs) the file is opened buffered and `direct()` is false.
  static absl::StatusOr<std::shared_ptr<SlabFile>> Open(const std::string& path, uint32_t id, uint64_t bytes);
  ~SlabFile();
  SlabFile(const SlabFile&) = delete;
  SlabFile& operator=(const SlabFile&) = delete;

  int fd() const { return fd_; }
  uint32_t id() const { return id_; }
  uint64_t bytes() const { return bytes_; }
  bool direct() const { return direct_; }
  const std::string& path() const { return path_; }
  // Unlink the file when the last reference goes.
  void MarkForDeletion() { delete_on_close_ = true; }

  static std::string FileName(uint32_t id);  // "slab-000003.kvt"
  // Parses FileName(); false for other names.
  static bool ParseFileName(const std::string& name, uint32_t* id);

 private:
  SlabFile(std::string path, int fd, uint32_t id, uint64_t bytes, bool direct)
      : path_(std::move(path)), fd_(fd), id_(id), bytes_(bytes), direct_(direct) {}

  const std::string path_;
  const int fd_;
  const uint32_t id_;
  const uint64_t bytes_;
  const bool direct_;
  std::atomic<bool> delete_on_close_{false};
};

}  // namespace kvtier
