// UringIoBackend: IoBackend over one io_uring. Callers submit from any thread (serialized by a mutex on
// the submission queue); one reaper thread owns the completion queue and runs callbacks. At most
// `queue_depth` ops are in flight; Submit waits (until its deadline) for a slot.
//
// Reads and writes on registered buffers use IORING_OP_{READ,WRITE}_FIXED; kSync is IORING_OP_FSYNC with
// IORING_FSYNC_DATASYNC.
//
// Shutdown: the destructor stops accepting ops and waits up to `drain_timeout` for in-flight ops; ops
// still stuck after that are abandoned (their callbacks never run; the kernel finishes them when the ring
// is closed).
#pragma once

#include <liburing.h>

#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "tiering/ssd/io_backend.h"

namespace kvtier {

class UringIoBackend final : public IoBackend {
 public:
  // UNAVAILABLE when io_uring cannot be set up here (old kernel, seccomp, io_uring_disabled): the caller
  // falls back to ThreadIoBackend.
  static absl::StatusOr<std::unique_ptr<UringIoBackend>> Create(int queue_depth,
                                                                absl::Duration drain_timeout = absl::Seconds(5));
  ~UringIoBackend() override;

  std::string_view name() const override { return registered_ ? "io_uring+fixed" : "io_uring"; }
  absl::Status RegisterBuffers(std::span<const iovec> buffers) override;
  void Submit(const IoOp& op, absl::Time deadline, IoCallback done) override;

 private:
  UringIoBackend(int queue_depth, absl::Duration drain_timeout);
  void ReapLoop();

  const int queue_depth_;
  const absl::Duration drain_timeout_;
  io_uring ring_{};
  bool registered_ = false;  // written before any Submit (RegisterBuffers is called once at setup)
  ssd::Mutex mu_;            // guards the submission queue and the counters below
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

}  // namespace kvtier
