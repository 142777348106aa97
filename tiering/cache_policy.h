// The BlockStore's cache-policy layer: the options, per-tenant accounts and counters behind KV events,
// tier-aware lookups, eviction and admission policies, retention pins with TTL, warm-up, per-tenant
// quotas and targeted invalidation. The logic lives in block_store_policy.cc (it runs under the store's
// table lock); the pieces that stand alone are kv_events.{h,cc} and eviction_policy.{h,cc}.
//
// Quotas and eviction order. Each tenant (a namespace: the hash of its salt) may have a byte quota per
// tier (0 = none). A tenant's own blocks are charged to the tier they are in: private blocks of its
// sessions and its committed blocks (GPU: resident bytes; host and SSD: record bytes). Allocation,
// page-in and promotion into a tier first make room inside the tenant's quota by demoting the tenant's
// own blocks, and fail (RESOURCE_EXHAUSTED) when its own pinned blocks fill it. When the tier as a whole
// needs room, victims are taken by class: blocks of tenants over their quota first, then blocks of
// tenants without a quota, then blocks of tenants within their quota, and last blocks under a retention
// hint; within a class, leaves before interior blocks, then the tier's eviction policy. So a noisy tenant
// can only push out its own blocks and those of tenants without a reservation.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "tiering/kv_events.h"

namespace kvtier {

struct TierPolicyOptions {
  std::string eviction = "lru";  // lru | slru | arc | cost (eviction_policy.h)
  // Admission into this tier from the one above (host, SSD): a block is written here only when it was
  // used at least this many times (commit, deduplicated commits and lookup hits) or is a shared prefix
  // (it has two or more children); otherwise it is dropped instead (counted). 0: admit everything.
  int admission_min_uses = 0;
};

struct TenantQuota {
  uint64_t gpu_bytes = 0;  // 0: no quota in that tier
  uint64_t host_bytes = 0;
  uint64_t ssd_bytes = 0;
};

struct CachePolicyOptions {
  TierPolicyOptions gpu, host, ssd;
  size_t event_buffer = 65536;  // events kept for consumers (a slower consumer sees a gap)
  // Transfer bandwidths for lookup time estimates: the configured values are the prior, refined by the
  // measured page-ins and SSD reads (moving average) once there are some.
  double host_to_gpu_bytes_per_second = 20e9;
  double ssd_read_bytes_per_second = 2e9;
  int64_t max_pin_ttl_ms = 24ll * 3600 * 1000;
};

// Per-tenant usage and quota, indexed by Tier value (1 gpu, 2 host, 3 ssd; [0] unused).
struct TenantUsage {
  uint64_t tenant_ns = 0;
  std::array<uint64_t, 4> used_bytes{};
  std::array<uint64_t, 4> quota_bytes{};
  std::array<uint64_t, 4> pinned_bytes{};  // held by retention pins
  uint64_t retention_pins = 0;
};

struct PolicyStats {
  std::array<uint64_t, 4> lookup_hits_by_tier{};  // blocks found by lookups, by the tier they were in
  uint64_t lookup_blocks_requested = 0;           // the denominator
  std::array<uint64_t, kNumRemoveReasons> removed_by_reason{};
  std::array<uint64_t, 4> admission_rejections{};  // by the tier the block was refused from entering
  std::array<uint64_t, 4> quota_evictions{};       // blocks demoted to make room inside a tenant's quota
  uint64_t pins_active = 0, pins_created = 0, pins_expired = 0, pinned_blocks_by_pins = 0;
  uint64_t retention_hint_blocks = 0;
  uint64_t invalidated = 0, warmed_blocks = 0;
  std::array<std::string, 4> eviction_policy;  // names, by tier
  double host_to_gpu_bytes_per_second = 0, ssd_read_bytes_per_second = 0;
  uint64_t event_next_seq = 0;
  std::vector<TenantUsage> tenants;
};

}  // namespace kvtier
