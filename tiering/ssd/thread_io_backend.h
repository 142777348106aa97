// ThreadIoBackend: IoBackend on plain pread/pwrite/fdatasync run by a small pool of threads. The
// fallback where io_uring is unavailable (old kernels, seccomp profiles that forbid it), and the
// reference the io_uring backend is tested against. Ignores registered buffers.
//
// At most `queue_depth` ops are queued or running; Submit waits (until its deadline) for room. Workers
// own the ops they have taken; a worker stuck in the kernel blocks only itself.
#pragma once

#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "tiering/ssd/io_backend.h"

namespace kvtier {

class ThreadIoBackend final : public IoBackend {
 public:
  ThreadIoBackend(int num_threads, int queue_depth);
  // Waits for the workers: ops already queued are failed with -ECANCELED, running ones finish.
  ~ThreadIoBackend() override;

  std::string_view name() const override { return "threads"; }
  absl::Status RegisterBuffers(std::span<const iovec>) override { return absl::OkStatus(); }
  void Submit(const IoOp& op, absl::Time deadline, IoCallback done) override;

 private:
  struct Pending {
    IoOp op;
    IoCallback done;
  };
  void WorkerLoop();

  const int queue_depth_;
  ssd::Mutex mu_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;  // queued + running
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

// Runs one op synchronously with pread/pwrite/fdatasync: bytes transferred or -errno.
int64_t RunIoOpSync(const IoOp& op);

}  // namespace kvtier
