#include "bench/ssd/raw_uring.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace kvtier::bench {

absl::StatusOr<RawResult> RawUringSequential(const std::string& path, uint64_t bytes, uint32_t block, int queue_depth,
                                             bool write) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0640);
  if (fd < 0) return absl::UnavailableError(absl::StrFormat("open %s: %s", path, std::strerror(errno)));
  if (write && fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrFormat("fallocate: %s", std::strerror(errno)));
  }
  const size_t arena = static_cast<size_t>(queue_depth) * block;
  auto* mem = static_cast<uint8_t*>(mmap(nullptr, arena, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  for (size_t i = 0; i < arena; ++i) mem[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
  std::vector<iovec> iov(queue_depth);
  for (int i = 0; i < queue_depth; ++i) iov[i] = iovec{mem + static_cast<size_t>(i) * block, block};
  io_uring ring;
  if (int rc = io_uring_queue_init(queue_depth, &ring, 0); rc < 0) {
    ::close(fd);
    munmap(mem, arena);
    return absl::UnavailableError(absl::StrFormat("io_uring_queue_init: %s", std::strerror(-rc)));
  }
  const bool fixed = io_uring_register_buffers(&ring, iov.data(), queue_depth) == 0;

  const auto start = std::chrono::steady_clock::now();
  uint64_t next = 0, done = 0;
  int in_flight = 0;
  std::vector<int> free_slots;
  for (int i = queue_depth - 1; i >= 0; --i) free_slots.push_back(i);
  absl::Status err;
  while (done < bytes && err.ok()) {
    while (!free_slots.empty() && next < bytes) {
      const int slot = free_slots.back();
      free_slots.pop_back();
      const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(block, bytes - next));
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      if (write) {
        fixed ? io_uring_prep_write_fixed(sqe, fd, iov[slot].iov_base, len, next, slot)
              : io_uring_prep_write(sqe, fd, iov[slot].iov_base, len, next);
      } else {
        fixed ? io_uring_prep_read_fixed(sqe, fd, iov[slot].iov_base, len, next, slot)
              : io_uring_prep_read(sqe, fd, iov[slot].iov_base, len, next);
      }
      io_uring_sqe_set_data64(sqe, (static_cast<uint64_t>(slot) << 32) | len);
      next += len;
      ++in_flight;
    }
    io_uring_submit(&ring);
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring, &cqe) < 0) break;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      const uint64_t data = io_uring_cqe_get_data64(cqe);
      if (cqe->res != static_cast<int>(data & 0xffffffffu)) {
        err = absl::UnavailableError(absl::StrFormat("raw io: res=%d", cqe->res));
      }
      done += data & 0xffffffffu;
      free_slots.push_back(static_cast<int>(data >> 32));
      --in_flight;
      ++seen;
    }
    io_uring_cq_advance(&ring, seen);
  }
  if (write && err.ok() && fdatasync(fd) != 0) err = absl::UnavailableError("fdatasync");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  io_uring_queue_exit(&ring);
  munmap(mem, arena);
  ::close(fd);
  if (!err.ok()) return err;
  return RawResult{bytes, secs};
}

}  // namespace kvtier::bench
