#include <cerrno>
#include <utility>

#include "tiering/ssd/io_backend.h"

namespace kvtier {

std::shared_ptr<IoBatch> IoBatch::Create(size_t num_ops) { return std::make_shared<IoBatch>(num_ops); }

IoBatch::IoBatch(size_t num_ops) : pending_(num_ops), results_(num_ops, -ECANCELED) {}

IoCallback IoBatch::Callback(size_t i, std::function<void(int64_t)> then) {
  // The callback owns a reference: the batch outlives a caller that stopped waiting.
  return [self = shared_from_this(), this, i, then = std::move(then)](int64_t result) {
    if (then) then(result);
    std::vector<std::function<void()>> run;
    {
      ssd::MutexLock lock(&mu_);
      results_[i] = result;
      if (--pending_ == 0) run.swap(on_complete_);
    }
    for (auto& fn : run) fn();
  };
}

bool IoBatch::WaitUntil(absl::Time deadline) {
  ssd::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_ == 0; };
  return mu_.AwaitWithDeadline(done, deadline);
}

int64_t IoBatch::result(size_t i) const {
  ssd::MutexLock lock(&mu_);
  return results_[i];
}

void IoBatch::OnAllComplete(std::function<void()> fn) {
  {
    ssd::MutexLock lock(&mu_);
    if (pending_ != 0) {
      on_complete_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

}  // namespace kvtier
