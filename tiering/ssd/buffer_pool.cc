#include "tiering/ssd/buffer_pool.h"

#include <sys/mman.h>

#include <cassert>
#include <cstdlib>

#include "absl/strings/str_format.h"
#include "tiering/ssd/record_format.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<BufferPool>> BufferPool::Create(int num_buffers, uint32_t buffer_bytes) {
  if (num_buffers <= 0 || buffer_bytes == 0 || buffer_bytes % ssd_format::kBlockSize != 0) {
    return absl::InvalidArgumentError("buffer pool needs >= 1 buffer of a non-zero multiple of 4 KiB");
  }
  // mmap: page-aligned, zero-filled, and returned to the OS in one piece.
  const size_t total = static_cast<size_t>(num_buffers) * buffer_bytes;
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("cannot map %d I/O buffers of %d bytes", num_buffers, buffer_bytes));
  }
  return std::unique_ptr<BufferPool>(new BufferPool(static_cast<uint8_t*>(p), num_buffers, buffer_bytes));
}

BufferPool::BufferPool(uint8_t* base, int num_buffers, uint32_t buffer_bytes)
    : buffer_bytes_(buffer_bytes), base_(base), total_bytes_(static_cast<size_t>(num_buffers) * buffer_bytes) {
  for (int i = 0; i < num_buffers; ++i) {
    iovecs_.push_back(iovec{base_ + static_cast<size_t>(i) * buffer_bytes, buffer_bytes});
  }
  ssd::MutexLock lock(&mu_);
  for (int i = num_buffers - 1; i >= 0; --i) free_.push_back(i);
}

BufferPool::~BufferPool() { munmap(base_, total_bytes_); }

std::optional<BufferPool::Buffer> BufferPool::Acquire(absl::Time deadline) {
  ssd::MutexLock lock(&mu_);
  auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !free_.empty(); };
  if (!mu_.AwaitWithDeadline(available, deadline)) return std::nullopt;
  const int index = free_.back();
  free_.pop_back();
  return Buffer{index, static_cast<uint8_t*>(iovecs_[index].iov_base)};
}

void BufferPool::Release(int index) {
  ssd::MutexLock lock(&mu_);
  assert(index >= 0 && index < static_cast<int>(iovecs_.size()));
  free_.push_back(index);
}

int BufferPool::free_count() const {
  ssd::MutexLock lock(&mu_);
  return static_cast<int>(free_.size());
}

}  // namespace kvtier
