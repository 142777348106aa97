// ssd::Mutex: absl::Mutex, annotated so that ThreadSanitizer sees its happens-before edges.
//
// Why: the system abseil (Debian's libabsl) is not built with -fsanitize=thread, so its Mutex does not
// tell TSan anything; in a TSan build every access guarded by an absl::Mutex is reported as a race and
// the tool is useless. This wrapper adds __tsan_acquire/__tsan_release around lock, unlock and condition
// evaluation (absl may evaluate a waiter's Condition on the unlocking thread, with the lock held), and
// compiles to a plain absl::Mutex everywhere else. Same API subset as absl, same locking annotations.
//
// Thread-safety: as absl::Mutex.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#if defined(__SANITIZE_THREAD__)
#define KVTIER_SSD_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVTIER_SSD_TSAN 1
#endif
#endif

#ifdef KVTIER_SSD_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace kvtier::ssd {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    mu_.Lock();
    Acquired();
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    Releasing();
    mu_.Unlock();
  }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() {
    mu_.ReaderLock();
    Acquired();
  }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() {
    Releasing();
    mu_.ReaderUnlock();
  }

  // Releases the lock until cond() holds or `deadline` passes, then re-takes it; returns cond()'s last
  // value. cond runs with the lock held, on this or another thread.
  template <typename F>
  bool AwaitWithDeadline(F& cond, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    auto annotated = [this, &cond]() {
      Acquired();
      const bool r = cond();
      Releasing();
      return r;
    };
    Releasing();
    const bool r = mu_.AwaitWithDeadline(absl::Condition(&annotated), deadline);
    Acquired();
    return r;
  }
  template <typename F>
  void Await(F& cond) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    AwaitWithDeadline(cond, absl::InfiniteFuture());
  }

 private:
#ifdef KVTIER_SSD_TSAN
  void Acquired() { __tsan_acquire(this); }
  void Releasing() { __tsan_release(this); }
#else
  void Acquired() {}
  void Releasing() {}
#endif

  absl::Mutex mu_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(Mutex* mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) { mu_->ReaderLock(); }
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() { mu_->ReaderUnlock(); }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace kvtier::ssd
