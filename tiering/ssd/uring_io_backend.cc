#include "tiering/ssd/uring_io_backend.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"

namespace kvtier {
namespace {

// One submitted op's completion, carried through the ring as user_data.
struct OpContext {
  IoCallback done;
};

}  // namespace

absl::StatusOr<std::unique_ptr<UringIoBackend>> UringIoBackend::Create(int queue_depth, absl::Duration drain_timeout) {
  if (queue_depth < 1 || queue_depth > 4096) return absl::InvalidArgumentError("queue_depth must be in [1, 4096]");
  std::unique_ptr<UringIoBackend> b(new UringIoBackend(queue_depth, drain_timeout));
  const int rc = io_uring_queue_init(static_cast<unsigned>(queue_depth), &b->ring_, 0);
  if (rc < 0) {
    b->ring_.ring_fd = -1;
    return absl::UnavailableError(absl::StrFormat("io_uring_queue_init: %s", std::strerror(-rc)));
  }
  b->reaper_ = std::thread([p = b.get()] { p->ReapLoop(); });
  return b;
}

UringIoBackend::UringIoBackend(int queue_depth, absl::Duration drain_timeout)
    : queue_depth_(queue_depth), drain_timeout_(drain_timeout) {}

UringIoBackend::~UringIoBackend() {
  {
    ssd::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (reaper_.joinable()) reaper_.join();
  if (ring_.ring_fd >= 0) io_uring_queue_exit(&ring_);
}

absl::Status UringIoBackend::RegisterBuffers(std::span<const iovec> buffers) {
  ssd::MutexLock lock(&mu_);
  const int rc = io_uring_register_buffers(&ring_, buffers.data(), static_cast<unsigned>(buffers.size()));
  if (rc < 0) {
    return absl::UnavailableError(absl::StrFormat("io_uring_register_buffers: %s", std::strerror(-rc)));
  }
  registered_ = true;
  return absl::OkStatus();
}

void UringIoBackend::Submit(const IoOp& op, absl::Time deadline, IoCallback done) {
  int rc = 0;
  {
    ssd::MutexLock lock(&mu_);
    auto has_room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || in_flight_ < queue_depth_; };
    if (!mu_.AwaitWithDeadline(has_room, deadline)) {
      rc = -ETIMEDOUT;
    } else if (stopping_) {
      rc = -ECANCELED;
    } else {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      // in_flight_ < queue_depth_ == SQ size and every SQE is submitted right away, so one is free.
      if (sqe == nullptr) {
        rc = -EBUSY;
      } else {
        const bool fixed = registered_ && op.buffer_index >= 0;
        switch (op.kind) {
          case IoKind::kRead:
            if (fixed) {
              io_uring_prep_read_fixed(sqe, op.fd, op.buf, op.len, op.offset, op.buffer_index);
            } else {
              io_uring_prep_read(sqe, op.fd, op.buf, op.len, op.offset);
            }
            break;
          case IoKind::kWrite:
            if (fixed) {
              io_uring_prep_write_fixed(sqe, op.fd, op.buf, op.len, op.offset, op.buffer_index);
            } else {
              io_uring_prep_write(sqe, op.fd, op.buf, op.len, op.offset);
            }
            break;
          case IoKind::kSync:
            io_uring_prep_fsync(sqe, op.fd, IORING_FSYNC_DATASYNC);
            break;
        }
        // The ring owns the context until the reaper takes it back from the CQE.
        io_uring_sqe_set_data(sqe, std::make_unique<OpContext>(OpContext{std::move(done)}).release());
        const int submitted = io_uring_submit(&ring_);
        if (submitted < 0) {
          // The SQE stays queued and goes out with the next successful submit; it is still in flight.
          rc = 0;
        }
        ++in_flight_;
        return;
      }
    }
  }
  done(rc);
}

void UringIoBackend::ReapLoop() {
  absl::Time drain_deadline = absl::InfiniteFuture();
  for (;;) {
    {
      ssd::MutexLock lock(&mu_);
      if (stopping_) {
        if (drain_deadline == absl::InfiniteFuture()) drain_deadline = absl::Now() + drain_timeout_;
        if (in_flight_ == 0 || absl::Now() >= drain_deadline) return;
      }
    }
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec ts{.tv_sec = 0, .tv_nsec = 50'000'000};  // wake up to notice shutdown
    const int rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    if (rc < 0 || cqe == nullptr) continue;  // -ETIME (tick) or -EINTR
    std::unique_ptr<OpContext> ctx(static_cast<OpContext*>(io_uring_cqe_get_data(cqe)));
    const int64_t res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    {
      ssd::MutexLock lock(&mu_);
      --in_flight_;
    }
    if (ctx != nullptr) ctx->done(res);
  }
}

}  // namespace kvtier
