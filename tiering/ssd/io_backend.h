// IoBackend: the asynchronous block-I/O interface under the SSD tier, and IoBatch, which tracks the
// completions of one caller's ops.
//
// Three implementations: UringIoBackend (io_uring, registered buffers, queue_depth ops in flight),
// ThreadIoBackend (pread/pwrite/fdatasync on a small thread pool; the fallback where io_uring is
// unavailable) and FaultInjectingIoBackend (wraps either and injects EIO, ENOSPC, short or torn writes,
// slow or hung completions, so every failure path of the tier is unit-tested without root).
//
// Contract shared by all backends:
//  - Submit never blocks past `deadline`: if the backend cannot accept the op by then (queue full, e.g.
//    behind a stuck disk), `done` runs inline with -ETIMEDOUT.
//  - `done` runs exactly once per submitted op, on a backend thread or inline, with the number of bytes
//    transferred (a write may be short) or -errno. A backend destroyed with ops still stuck in the kernel
//    drops their callbacks (it never calls them after its destructor returns).
//  - Buffers and lengths of reads and writes are kBlockSize-aligned (files are opened O_DIRECT); the
//    buffer must stay valid until `done` has run, which is why callers keep buffers alive through the
//    IoBatch, not through their own stack frame: a caller that times out walks away, the kernel does not.
//
// Thread-safety: Submit and RegisterBuffers may be called from any thread.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "tiering/ssd/mutex.h"

namespace kvtier {

enum class IoKind : uint8_t {
  kRead,
  kWrite,
  kSync,  // fdatasync(fd): makes earlier completed writes to fd durable; buf/len/offset unused
};

struct IoOp {
  IoKind kind = IoKind::kRead;
  int fd = -1;
  uint64_t offset = 0;
  uint8_t* buf = nullptr;
  uint32_t len = 0;
  int buffer_index = -1;  // index into the registered buffers containing buf, or -1
};

using IoCallback = std::function<void(int64_t result)>;

class IoBackend {
 public:
  virtual ~IoBackend() = default;
  // "io_uring", "threads" or a decorated name; used in logs and stats.
  virtual std::string_view name() const = 0;
  // Registers `buffers` for fixed-buffer I/O; IoOp::buffer_index then indexes this list. Backends that
  // have no such notion accept and ignore it. A failure leaves the backend usable without fixed buffers.
  virtual absl::Status RegisterBuffers(std::span<const iovec> buffers) = 0;
  virtual void Submit(const IoOp& op, absl::Time deadline, IoCallback done) = 0;
};

// Completion tracking for a group of ops submitted together. Owned through shared_ptr by the caller and
// by every pending op's callback, so that a caller that stops waiting (timeout) leaves the batch, and
// whatever it retains (buffers, extents), alive until the last op completes.
class IoBatch : public std::enable_shared_from_this<IoBatch> {
 public:
  static std::shared_ptr<IoBatch> Create(size_t num_ops);
  explicit IoBatch(size_t num_ops);  // use Create; public for make_shared

  // The callback to submit op `i` with. `then`, if given, runs first with the result (on the completing
  // thread), e.g. to copy a read buffer out and release it.
  IoCallback Callback(size_t i, std::function<void(int64_t)> then = nullptr);
  // Marks op `i` as never submitted with `result` (e.g. -ETIMEDOUT when no buffer was available).
  void Fail(size_t i, int64_t result) { Callback(i)(result); }

  // Waits for every op; false when `deadline` passed first.
  bool WaitUntil(absl::Time deadline);
  // Result of op `i` (bytes or -errno); valid once WaitUntil returned true.
  int64_t result(size_t i) const;
  size_t size() const { return results_.size(); }

  // Runs `fn` once every op has completed: now, on this thread, if they already have.
  void OnAllComplete(std::function<void()> fn);

 private:
  mutable ssd::Mutex mu_;
  size_t pending_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> results_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> on_complete_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
