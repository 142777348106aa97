// EvictionPolicy: which evictable blocks of one tier go first. Each tier of the BlockStore has its own
// policy object, chosen by name in the config (cache_policy.{gpu,host,ssd}.eviction):
//
//   lru    least recently used first (the store's original order).
//   slru   segmented LRU: a block enters the probationary segment and moves to the protected one on its
//          second use in the tier; probationary blocks go first, and the protected segment is capped at
//          80 % of the tier's blocks (its least recent overflow falls back to probation). One-shot traffic
//          cycles through probation and cannot flush blocks that were used twice (a shared system prompt).
//   arc    adaptive replacement (Megiddo & Modha): recency list T1, frequency list T2 and ghost lists B1/B2
//          of recently evicted keys; a ghost hit moves the target size p of T1 toward the list that would
//          have kept it. Scan resistant like SLRU, without a fixed split.
//   cost   cost-aware GreedyDual-Size-Frequency: priority = L + uses x recompute_cost / bytes, lowest
//          first, where recompute_cost grows with the block's position in its sequence (a block deep in a
//          long prompt costs more prefill to rebuild) and bytes is what it occupies in this tier; L ages
//          to the priority of the last victim so that idle blocks eventually go.
//
// Under every policy a prefix-tree leaf goes before an interior block (a block is useless without its
// ancestors), so the policy orders leaves among themselves and interior blocks among themselves.
//
// Thread-safety: none; the store calls a policy only under its table lock.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "tiering/block_key.h"

namespace kvtier {

// What a policy knows of a block when it enters a tier.
struct PolicyBlockInfo {
  uint64_t id = 0;
  BlockKey key;
  uint64_t bytes = 0;        // bytes it occupies in this tier
  double recompute_cost = 1;  // relative cost to rebuild it by prefill (see cost policy)
};

// One evictable block offered to Rank.
struct EvictionCandidate {
  uint64_t id = 0;
  bool leaf = true;
  int priority_class = 0;  // lower goes first: 0 over-quota tenant, 1 normal, 2 retention hint
  double score = 0;        // filled in by the policy: lower goes first
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string_view name() const = 0;
  // The block entered this tier (committed into it, or moved into it).
  virtual void OnInsert(const PolicyBlockInfo& b) = 0;
  // The block was used (a lookup hit or a read) while in this tier.
  virtual void OnAccess(uint64_t id) = 0;
  // The block left this tier; `evicted` when it was pushed out (down a tier or dropped) rather than
  // promoted or freed by its owner.
  virtual void OnRemove(uint64_t id, bool evicted) = 0;
  // Orders `c` so that its first `n` entries (all when n >= size) are the victims, best victim first:
  // priority class, then leaves before interior blocks, then the policy's own order.
  void Rank(std::vector<EvictionCandidate>& c, size_t n);
  // Blocks the policy tracks as resident (tests).
  virtual size_t tracked() const = 0;

 protected:
  // Fills in candidate scores (lower = evict sooner). May update policy state (ARC, SLRU segment caps).
  virtual void Score(std::vector<EvictionCandidate>& c) = 0;
  // Called with the chosen victims, in order (cost policy ages L).
  virtual void Chosen(std::span<const EvictionCandidate> victims) { (void)victims; }
};

// "lru", "slru", "arc" or "cost"; any other name is INVALID_ARGUMENT.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name);

}  // namespace kvtier
