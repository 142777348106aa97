// KvEventLog: the store's KV event stream — one event for every block published (stored), moved between
// tiers, and removed (evicted, invalidated, dropped as corrupt, refused by admission) — for cache-aware
// routers and operators.
//
// Design. One bounded ring of the most recent events, each numbered by a global sequence number that
// increases by one per event (the first event is 1). Producers (the BlockStore, under its own lock)
// append in O(1) and never wait for consumers. Each consumer keeps its own cursor (the next sequence
// number it wants) and reads from the ring; a consumer that falls more than the ring's capacity behind
// finds its next events overwritten: Read then reports how many it lost (a gap) and resumes at the oldest
// event still held, and the consumer resyncs from a snapshot (BlockStore::Snapshot). A slow consumer
// therefore costs the store nothing and never blocks it.
//
// Filtering (a tenant sees only its own blocks) is done by the reader; the returned `next` cursor covers
// the filtered-out events too, so a consumer checks continuity on `next`, not on the events it saw.
//
// Thread-safety: all methods are thread-safe; the ring has its own mutex (never held while the caller
// holds anything else of ours, except the store lock during Append).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "tiering/block_key.h"
#include "tiering/sync.h"

namespace kvtier {

enum class KvEventType : uint8_t { kStored = 1, kMoved = 2, kRemoved = 3 };
const char* KvEventTypeName(KvEventType t);

// Why a block was removed (kRemoved events, and the evictions-by-reason counters).
enum class RemoveReason : uint8_t {
  kEvicted = 1,      // capacity: pushed out of the last tier that had room
  kInvalidated = 2,  // an operator's or tenant's invalidation
  kCorrupt = 3,      // its record failed verification
  kWriteFailed = 4,  // the SSD write failed and no copy was left
  kAdmission = 5,    // the admission filter kept it out of the next tier down
  kQuota = 6,        // its tenant's quota in the last tier had no room for it
};
inline constexpr int kNumRemoveReasons = 7;  // indexable by the enum value
const char* RemoveReasonName(RemoveReason r);

struct KvEvent {
  uint64_t seq = 0;
  int64_t time_unix_ns = 0;
  KvEventType type = KvEventType::kStored;
  BlockKey key;
  BlockKey parent;           // zero for the first block of a sequence
  uint64_t layout_id = 0;
  uint64_t tenant_ns = 0;    // hash of the tenant's salt (the store's namespace id)
  uint8_t tier = 0;          // where the block is now (kStored, kMoved) or was (kRemoved); Tier values
  uint8_t from_tier = 0;     // kMoved: where it came from
  RemoveReason reason = RemoveReason::kEvicted;  // kRemoved only
  std::string format;        // the block's format in `tier`, e.g. "fp16" (resident) or "int8" (offload)
  int32_t block_size = 0;
  std::vector<int32_t> tokens;  // kStored, kMoved: the block's tokens (empty after a warm restart)
};

class KvEventLog {
 public:
  explicit KvEventLog(size_t capacity);

  // Stamps `e` with the next sequence number and the current time and appends it, overwriting the oldest
  // event when the ring is full. Returns the sequence number.
  uint64_t Append(KvEvent e);

  struct ReadResult {
    std::vector<KvEvent> events;  // in sequence order, filtered
    uint64_t next = 0;            // the cursor to pass next time
    uint64_t lost = 0;            // events overwritten before this consumer read them (a gap)
  };
  // Events with seq >= `cursor` that pass `filter` (null: all), at most `max_events`. When there are none
  // yet, waits up to `wait` for one to be appended. A cursor of 0 means "from the next event on".
  ReadResult Read(uint64_t cursor, size_t max_events, const std::function<bool(const KvEvent&)>& filter,
                  std::chrono::milliseconds wait);

  // The sequence number the next event will get (a snapshot taken now is current up to next_seq() - 1).
  uint64_t next_seq() const;
  size_t capacity() const { return capacity_; }

  // Wakes readers blocked in Read (shutdown).
  void WakeAll();

  // Consumers (gRPC streams, the ZeroMQ publisher) register and report their cursor, so that how far
  // each one is behind (its lag) and what it lost can be exported.
  struct ConsumerInfo {
    std::string name;
    uint64_t lag = 0;   // events appended that it has not read yet
    uint64_t lost = 0;  // events it missed (gaps), in total
  };
  uint64_t AddConsumer(std::string name);
  void UpdateConsumer(uint64_t id, uint64_t cursor, uint64_t lost);
  void RemoveConsumer(uint64_t id);
  std::vector<ConsumerInfo> Consumers() const;

 private:
  const size_t capacity_;
  mutable Mutex mu_;
  std::vector<KvEvent> ring_ ABSL_GUARDED_BY(mu_);  // ring_[seq % capacity_]
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t wake_generation_ ABSL_GUARDED_BY(mu_) = 0;
  struct Consumer {
    std::string name;
    uint64_t cursor = 0;
    uint64_t lost = 0;
  };
  absl::flat_hash_map<uint64_t, Consumer> consumers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_consumer_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace kvtier
