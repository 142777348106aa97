#include "tiering/ssd/thread_io_backend.h"

#include <unistd.h>

#include <cerrno>

namespace kvtier {

int64_t RunIoOpSync(const IoOp& op) {
  ssize_t n = 0;
  switch (op.kind) {
    case IoKind::kRead:
      n = pread(op.fd, op.buf, op.len, static_cast<off_t>(op.offset));
      break;
    case IoKind::kWrite:
      n = pwrite(op.fd, op.buf, op.len, static_cast<off_t>(op.offset));
      break;
    case IoKind::kSync:
      n = fdatasync(op.fd);
      break;
  }
  return n < 0 ? -errno : n;
}

ThreadIoBackend::ThreadIoBackend(int num_threads, int queue_depth) : queue_depth_(queue_depth < 1 ? 1 : queue_depth) {
  if (num_threads < 1) num_threads = 1;
  for (int i = 0; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadIoBackend::~ThreadIoBackend() {
  std::deque<Pending> dropped;
  {
    ssd::MutexLock lock(&mu_);
    stopping_ = true;
    dropped.swap(queue_);
  }
  for (Pending& p : dropped) p.done(-ECANCELED);
  for (std::thread& t : workers_) t.join();
}

void ThreadIoBackend::Submit(const IoOp& op, absl::Time deadline, IoCallback done) {
  {
    ssd::MutexLock lock(&mu_);
    auto has_room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || outstanding_ < queue_depth_; };
    if (mu_.AwaitWithDeadline(has_room, deadline) && !stopping_) {
      ++outstanding_;
      queue_.push_back(Pending{op, std::move(done)});
      return;
    }
  }
  done(-ETIMEDOUT);
}

void ThreadIoBackend::WorkerLoop() {
  for (;;) {
    Pending p;
    {
      ssd::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
      mu_.Await(ready);
      if (queue_.empty()) return;  // stopping
      p = std::move(queue_.front());
      queue_.pop_front();
    }
    const int64_t result = RunIoOpSync(p.op);
    {
      ssd::MutexLock lock(&mu_);
      --outstanding_;
    }
    p.done(result);
  }
}

}  // namespace kvtier
