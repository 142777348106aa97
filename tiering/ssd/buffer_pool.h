// BufferPool: a fixed set of equal, 4 KiB-aligned I/O buffers carved from one allocation, so that the
// whole pool can be registered with io_uring once (fixed buffers skip per-I/O page pinning).
//
// Every SSD-tier I/O goes through a pool buffer: writes copy the record bytes in, reads copy them out.
// The pool bounds the memory the tier has in flight; a caller that cannot get a buffer before its
// deadline gives up (a stuck disk holds buffers, and must not hang everyone behind it forever).
//
// Thread-safety: Acquire and Release may be called from any thread. The pool must outlive every buffer
// it handed out, including those held by I/O that outlived its caller (the tier destroys its backend,
// which drops or completes such I/O, before its pool).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tiering/ssd/mutex.h"

namespace kvtier {

class BufferPool {
 public:
  struct Buffer {
    int index;      // also the registered-buffer index
    uint8_t* data;  // buffer_bytes() long, 4 KiB-aligned
  };

  // `num_buffers` buffers of `buffer_bytes` (a multiple of 4 KiB) each; RESOURCE_EXHAUSTED without memory.
  static absl::StatusOr<std::unique_ptr<BufferPool>> Create(int num_buffers, uint32_t buffer_bytes);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A free buffer, waiting for one until `deadline`; nullopt on timeout.
  std::optional<Buffer> Acquire(absl::Time deadline);
  void Release(int index);

  uint32_t buffer_bytes() const { return buffer_bytes_; }
  int size() const { return static_cast<int>(iovecs_.size()); }
  // One iovec per buffer, in index order (for IoBackend::RegisterBuffers).
  const std::vector<iovec>& iovecs() const { return iovecs_; }
  int free_count() const;

 private:
  BufferPool(uint8_t* base, int num_buffers, uint32_t buffer_bytes);

  const uint32_t buffer_bytes_;
  uint8_t* base_ = nullptr;
  size_t total_bytes_ = 0;
  std::vector<iovec> iovecs_;
  mutable ssd::Mutex mu_;
  std::vector<int> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
