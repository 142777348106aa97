// KvEventZmqPublisher: publishes the store's KV events over ZeroMQ PUB in the KV-event wire format that
// vLLM-style cache-aware routers consume (docs/cache_policy.md, "ZeroMQ"), when
// cache_policy.kv_events_zmq_endpoint is set.
//
// Each message has three frames: the topic, an 8-byte big-endian batch sequence number (0, 1, 2, ...),
// and a msgpack EventBatch in vLLM's array-like layout:
//   [ts, [event, ...]]                                   ts: float seconds since the epoch
//   ["BlockStored", [key], parent|nil, [tokens], block_size, nil, medium, nil]
//   ["BlockRemoved", [key], medium]
//   ["AllBlocksCleared"]
// where key and parent are kvtier's 16-byte block keys (docs/block_hash.md) as msgpack bin, and medium is
// "GPU", "CPU" (the host tier) or "DISK" (the SSD tier). A move between tiers is a BlockRemoved from the
// old medium followed by a BlockStored in the new one. If the publisher itself falls behind the event
// buffer, it publishes AllBlocksCleared and then every cached block as BlockStored (a resync), so a
// subscriber's view stays exact. PUB drops messages for subscribers that cannot keep up (high-water
// mark) and never blocks the daemon; subscribers detect that from the sequence numbers.
//
// Thread-safety: one publishing thread owns the socket; Start/destruction from the owner only.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "tiering/block_store.h"

namespace kvtier {

class KvEventZmqPublisher {
 public:
  // Binds (endpoint with '*', ipc:// or inproc://) or connects to `endpoint`; fails naming it when it
  // cannot. `store` must outlive the publisher.
  static absl::StatusOr<std::unique_ptr<KvEventZmqPublisher>> Start(const std::string& endpoint,
                                                                    const std::string& topic, BlockStore* store);
  ~KvEventZmqPublisher();
  KvEventZmqPublisher(const KvEventZmqPublisher&) = delete;
  KvEventZmqPublisher& operator=(const KvEventZmqPublisher&) = delete;

  uint64_t batches_sent() const { return batches_.load(); }

 private:
  KvEventZmqPublisher() = default;
  void Loop();

  BlockStore* store_ = nullptr;
  std::string topic_;
  void* ctx_ = nullptr;
  void* pub_ = nullptr;
  uint64_t consumer_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> batches_{0};
  std::thread thread_;
};

}  // namespace kvtier
