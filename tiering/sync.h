// Mutex: std::mutex with compiler-checkable thread annotations (ABSL_GUARDED_BY & co.) and an
// absl-style Await(condition). kvtier uses it instead of absl::Mutex because the distribution's abseil is
// not built with ThreadSanitizer: TSan cannot see absl::Mutex's synchronization and would report every
// guarded access as a race, while std::mutex is intercepted and checked.
//
// Conditions are re-evaluated whenever the mutex is released (by Unlock or by another thread starting to
// wait), so state changes need no explicit signal.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace kvtier {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    mu_.unlock();
    cv_.notify_all();
  }

  // Blocks (releasing the mutex meanwhile) until cond() is true. The mutex must be held.
  template <class Cond>
  void Await(Cond&& cond) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    // Waiting releases the mutex: wake the others first, since the caller may have changed state they
    // wait on (a release through the condition variable does not pass through Unlock).
    cv_.notify_all();
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    cv_.wait(lock, cond);
    lock.release();
  }

  // As Await, but gives up after `timeout`; returns cond().
  template <class Cond>
  bool AwaitWithTimeout(Cond&& cond, std::chrono::milliseconds timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    cv_.notify_all();
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    const bool ok = cv_.wait_for(lock, timeout, cond);
    lock.release();
    return ok;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* mu_;
};

}  // namespace kvtier
