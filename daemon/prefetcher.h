// Prefetcher: pages prefixes up to the GPU tier in the background (the Prefetch RPC).
//
// A prefetch is a list of block keys (a prefix, in order). One worker thread promotes the prefetches
// queued by all sessions a chunk of blocks at a time, round robin, so a long prefix does not hold up a
// short one and a caller sees its first blocks arrive early (it may Attend over them while the rest is
// still moving). A prefetch ends when every block is on the GPU tier, at the first block that is not
// cached (or cannot be brought in), or when its session ends (then its pins are released with the
// session). Finished prefetches are kept for kKeepDone so that their caller can collect the result.
//
// Thread-safety: all methods are thread-safe. Callbacks run on the worker thread or the caller's.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/session_registry.h"
#include "tiering/block_store.h"

namespace kvtier {

struct PrefetchProgress {
  enum class State { kRunning, kDone, kCancelled };
  State state = State::kRunning;
  int32_t requested = 0;
  int32_t ready = 0;       // blocks of the prefix on the GPU tier so far
  int32_t prefix_end = 0;  // first block not cached or not brought in (requested when none); valid when done
  std::vector<BlockLocationInfo> blocks;  // the ready blocks (filled when done)
};

class Prefetcher {
 public:
  static constexpr int kMaxKeys = 65536;          // per prefetch
  static constexpr int kMaxPerSession = 64;       // unfinished prefetches per session
  static constexpr int kChunkBlocks = 16;         // blocks promoted per step
  static constexpr absl::Duration kKeepDone = absl::Seconds(60);

  Prefetcher(BlockStore* store, SessionRegistry* sessions);
  ~Prefetcher();

  // Queues a prefetch for `session`; returns its id.
  absl::StatusOr<uint64_t> Start(const Session& session, uint64_t layout_id, std::vector<BlockKey> keys, bool pin);

  // Calls `done` with the prefetch's progress: at once when it is finished or `wait` is zero, else when it
  // finishes or `wait` has passed, whichever is first. NOT_FOUND for an unknown id or another session's.
  using Callback = std::function<void(absl::StatusOr<PrefetchProgress>)>;
  void Get(SessionId session, uint64_t id, absl::Duration wait, Callback done);

  // Stops the worker; unfinished prefetches are cancelled and every waiting caller is answered.
  void Stop();

 private:
  struct Waiter {
    absl::Time deadline;
    Callback done;
  };
  struct Job {
    uint64_t id = 0;
    SessionId session = 0;
    std::string salt;
    uint64_t layout_id = 0;
    std::vector<BlockKey> keys;
    bool pin = false;
    size_t next = 0;
    PrefetchProgress progress;
    absl::Time finished;
    std::vector<Waiter> waiters;
  };

  void Loop();
  // One chunk of `job` (runs without mu_); true when the job is finished.
  bool Step(Job& job);
  // Answers waiters that are due (job finished or deadline passed); mu_ held. Returns callbacks to run.
  void CollectDueLocked(std::vector<std::function<void()>>* calls);

  BlockStore* store_;
  SessionRegistry* sessions_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::shared_ptr<Job>> jobs_;  // by id (ids are not secret: they are checked per session)
  std::deque<uint64_t> runnable_;                  // round robin
  std::thread worker_;
};

}  // namespace kvtier
