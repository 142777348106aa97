#include "tiering/ssd/fault_io_backend.h"

#include <algorithm>
#include <cerrno>
#include <optional>

#include "tiering/ssd/record_format.h"

namespace kvtier {

FaultInjectingIoBackend::FaultInjectingIoBackend(std::unique_ptr<IoBackend> base) : base_(std::move(base)) {
  timer_ = std::thread([this] { TimerLoop(); });
}

FaultInjectingIoBackend::~FaultInjectingIoBackend() {
  ReleaseHung();
  {
    ssd::MutexLock lock(&mu_);
    stopping_ = true;
  }
  timer_.join();
  // Ops still in the wrapped backend complete (or are dropped) in its destructor; their callbacks may
  // Schedule() onto a stopped timer, which then runs them inline.
  base_.reset();
}

void FaultInjectingIoBackend::AddRule(const FaultRule& rule) {
  ssd::MutexLock lock(&mu_);
  rules_.push_back(Rule{rule});
}

void FaultInjectingIoBackend::ClearRules() {
  ssd::MutexLock lock(&mu_);
  rules_.clear();
}

void FaultInjectingIoBackend::ReleaseHung() {
  std::vector<IoCallback> hung;
  {
    ssd::MutexLock lock(&mu_);
    hung.swap(hung_);
  }
  for (IoCallback& cb : hung) cb(-ECANCELED);
}

int64_t FaultInjectingIoBackend::faults_injected() const {
  ssd::MutexLock lock(&mu_);
  return faults_;
}

void FaultInjectingIoBackend::SetSeed(uint64_t seed) {
  ssd::MutexLock lock(&mu_);
  rng_ = seed;
}

void FaultInjectingIoBackend::Schedule(absl::Time when, IoCallback done, int64_t result) {
  {
    ssd::MutexLock lock(&mu_);
    if (!stopping_) {
      timed_.push_back(Timed{when, std::move(done), result});
      return;
    }
  }
  done(result);
}

void FaultInjectingIoBackend::TimerLoop() {
  ssd::MutexLock lock(&mu_);
  for (;;) {
    if (stopping_ && timed_.empty()) return;
    absl::Time next = absl::InfiniteFuture();
    for (const Timed& t : timed_) next = std::min(next, t.when);
    if (!stopping_) {
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      // Re-scan at least every 10 ms so that newly scheduled completions are noticed.
      mu_.AwaitWithDeadline(wake, std::min(next, absl::Now() + absl::Milliseconds(10)));
    }
    const absl::Time now = absl::Now();
    std::vector<Timed> due;
    for (auto it = timed_.begin(); it != timed_.end();) {
      if (it->when <= now || stopping_) {
        due.push_back(std::move(*it));
        it = timed_.erase(it);
      } else {
        ++it;
      }
    }
    mu_.Unlock();
    for (Timed& t : due) t.done(t.result);
    mu_.Lock();
  }
}

void FaultInjectingIoBackend::Submit(const IoOp& op, absl::Time deadline, IoCallback done) {
  std::optional<FaultRule> fault;
  {
    ssd::MutexLock lock(&mu_);
    for (Rule& r : rules_) {
      if (r.spec.kind != op.kind) continue;
      if (r.seen++ < r.spec.skip) break;  // this op belongs to the rule's pass-through prefix
      if (r.spec.count >= 0 && r.fired >= r.spec.count) continue;
      if (r.spec.probability < 1.0) {
        rng_ = rng_ * 6364136223846793005ULL + 1442695040888963407ULL;  // LCG: cheap, seeded, repeatable
        if (static_cast<double>(rng_ >> 11) * 0x1.0p-53 >= r.spec.probability) continue;
      }
      ++r.fired;
      ++faults_;
      fault = r.spec;
      break;
    }
  }
  if (!fault) {
    base_->Submit(op, deadline, std::move(done));
    return;
  }
  switch (fault->action) {
    case FaultAction::kError:
      done(-fault->error);
      return;
    case FaultAction::kShortWrite:
    case FaultAction::kTornWrite: {
      IoOp partial = op;
      const uint32_t prefix = std::min<uint32_t>(fault->bytes, op.len);
      partial.len = prefix / ssd_format::kBlockSize * ssd_format::kBlockSize;  // O_DIRECT granularity
      const bool torn = fault->action == FaultAction::kTornWrite;
      const uint32_t full = op.len;
      if (partial.len == 0) {
        done(torn ? full : 0);
        return;
      }
      base_->Submit(partial, deadline,
                    [done = std::move(done), torn, full](int64_t r) { done(r < 0 ? r : (torn ? full : r)); });
      return;
    }
    case FaultAction::kDelay: {
      const absl::Duration delay = fault->delay;
      base_->Submit(op, deadline,
                    [this, done = std::move(done), delay](int64_t r) { Schedule(absl::Now() + delay, done, r); });
      return;
    }
    case FaultAction::kHang: {
      ssd::MutexLock lock(&mu_);
      hung_.push_back(std::move(done));
      return;
    }
  }
}

}  // namespace kvtier
