// WorkerPool: a few threads that run the CPU-bound parts of SSD-tier batches (zstd compression and
// decompression, checksums) in parallel. ParallelFor is the only entry point; the calling thread works
// too, so a pool of N threads gives N+1-way parallelism and a busy pool never blocks progress.
//
// Thread-safety: ParallelFor may be called from several threads at once; their items interleave.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "tiering/ssd/mutex.h"

namespace kvtier {

class WorkerPool {
 public:
  explicit WorkerPool(int num_threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Runs fn(0) .. fn(n-1), in any order and on any of the pool's threads or the caller's; returns when
  // all have finished.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);
  int num_threads() const { return static_cast<int>(threads_.size()); }

 private:
  void Loop();

  ssd::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvtier
