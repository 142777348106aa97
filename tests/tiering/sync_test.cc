#include "tiering/sync.h"

#include <gtest/gtest.h>

#include <thread>

namespace kvtier {
namespace {

// A state change followed by the changer itself waiting (not unlocking) must still wake the waiters.
TEST(Mutex, ChangeThenAwaitWakesOtherWaiters) {
  Mutex mu;
  bool ready = false;
  bool done = false;
  std::thread waiter([&] {
    MutexLock lock(&mu);
    mu.Await([&] { return ready; });
    done = true;
  });
  {
    MutexLock lock(&mu);
    mu.AwaitWithTimeout([] { return false; }, std::chrono::milliseconds(50));  // let the waiter block
    ready = true;
    // Waits (releasing the mutex through the condition variable) until the waiter has run.
    const bool woke = mu.AwaitWithTimeout([&] { return done; }, std::chrono::seconds(10));
    EXPECT_TRUE(woke);
  }
  waiter.join();
  EXPECT_TRUE(done);
}

}  // namespace
}  // namespace kvtier
