#include "tiering/ssd/worker_pool.h"

#include <atomic>
#include <memory>

namespace kvtier {

WorkerPool::WorkerPool(int num_threads) {
  for (int i = 0; i < num_threads; ++i) threads_.emplace_back([this] { Loop(); });
}

WorkerPool::~WorkerPool() {
  {
    ssd::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void WorkerPool::Loop() {
  for (;;) {
    std::function<void()> task;
    {
      ssd::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !tasks_.empty(); };
      mu_.Await(ready);
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

void WorkerPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (n == 1 || threads_.empty()) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // Helpers and the caller claim indices from one counter; the state outlives a helper that starts
  // after the caller has already returned (it finds no index left and exits).
  struct State {
    std::atomic<size_t> next{0};
    ssd::Mutex mu;
    size_t done ABSL_GUARDED_BY(mu) = 0;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &fn]() {
    size_t finished = 0;
    for (size_t i; (i = state->next.fetch_add(1)) < n;) {
      fn(i);
      ++finished;
    }
    if (finished > 0) {
      ssd::MutexLock lock(&state->mu);
      state->done += finished;
    }
  };
  const size_t helpers = std::min(n - 1, threads_.size());
  {
    ssd::MutexLock lock(&mu_);
    for (size_t h = 0; h < helpers; ++h) tasks_.push_back(work);
  }
  work();
  ssd::MutexLock lock(&state->mu);
  auto all_done = [&state, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->mu) { return state->done == n; };
  state->mu.Await(all_done);
}

}  // namespace kvtier
