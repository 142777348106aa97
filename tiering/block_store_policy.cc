// BlockStore: the cache-policy layer (cache_policy.h) — events, tenant accounts and quotas, eviction
// policies and admission, retention pins, invalidation, warm-up and time-to-GPU estimates. Everything
// here runs under the store's table lock except where a method says it releases it.
#include <xxhash.h>

#include <algorithm>
#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tiering/block_store.h"
#include "tiering/log.h"

namespace kvtier {
namespace internal_policy {
// Set while Warm runs a lookup on this thread: warm-up is not lookup traffic and is kept out of the
// lookup and hit counters.
thread_local bool tls_warming = false;
}  // namespace internal_policy
using internal_policy::tls_warming;

namespace {

// Synthetic session ids that hold hard retention pins (the registry's ids are random 64-bit numbers).
constexpr SessionId kPinSessionBase = 1ull << 63;

int T(Tier t) { return static_cast<int>(t); }

std::string FormatsOf(const PageGeometry& g) {
  std::vector<std::string> names;
  for (const SegmentPlacement& s : g.segments()) {
    std::string n(GetFormatInfo(s.codec.format).name);
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  }
  return absl::StrJoin(names, "+");
}

}  // namespace

uint64_t BlockStore::TenantNs(std::string_view tenant_salt) {
  return XXH3_64bits(tenant_salt.data(), tenant_salt.size()) | 1;  // as Commit computes Entry::ns
}

void BlockStore::SetSessionTenant(SessionId session, std::string_view tenant_salt) {
  MutexLock lock(&mu_);
  session_ns_[session] = TenantNs(tenant_salt);
}

uint64_t BlockStore::TenantOfLocked(const Entry& e) const {
  if (e.committed) return e.ns;
  auto it = session_ns_.find(e.owner);
  return it == session_ns_.end() ? 0 : it->second;
}

uint64_t BlockStore::TierBytesLocked(const Entry& e) const {
  if (e.tier == Tier::kGpu) return e.layout != nullptr ? ResidentBytes(*e.layout) : 0;
  return e.record_bytes;
}

std::string BlockStore::FormatInTierLocked(const Entry& e) const {
  if (e.layout == nullptr) return "offload";  // restored from SSD, layout not registered again yet
  const int kind = e.tier == Tier::kGpu ? 0 : e.parent.IsZero() ? 2 : 1;
  auto [it, inserted] = format_names_.try_emplace({e.layout->id, kind});
  if (inserted)
    it->second = FormatsOf(kind == 0 ? e.layout->resident : e.layout->offload_for(kind == 2));
  return it->second;
}

void BlockStore::ChargeLocked(Entry& e) {
  const uint64_t ns = TenantOfLocked(e);
  const uint64_t bytes = TierBytesLocked(e);
  if (ns == e.charged_ns && e.tier == e.charged_tier && bytes == e.charged_bytes) return;
  if (e.charged_ns != 0 && e.charged_bytes != 0) {
    uint64_t& used = tenants_[e.charged_ns].used_bytes[T(e.charged_tier)];
    used -= std::min(used, e.charged_bytes);
  }
  e.charged_ns = ns;
  e.charged_tier = e.tier;
  e.charged_bytes = ns != 0 ? bytes : 0;
  if (ns != 0 && bytes != 0) {
    TenantUsage& u = tenants_[ns];
    u.tenant_ns = ns;
    u.used_bytes[T(e.tier)] += bytes;
  }
}

void BlockStore::EmitLocked(KvEventType type, const Entry& e, Tier from, RemoveReason reason) {
  KvEvent ev;
  ev.type = type;
  ev.key = e.key;
  ev.parent = e.parent;
  ev.layout_id = e.layout_id;
  ev.tenant_ns = e.ns;
  ev.tier = static_cast<uint8_t>(e.tier);
  ev.from_tier = type == KvEventType::kMoved ? static_cast<uint8_t>(from) : 0;
  ev.reason = reason;
  ev.format = FormatInTierLocked(e);
  ev.block_size = e.layout != nullptr ? e.layout->shape.block_size : 0;
  if (type != KvEventType::kRemoved) ev.tokens = e.tokens;
  events_->Append(std::move(ev));
}

void BlockStore::OnStoredLocked(Entry& e, const std::vector<int32_t>& tokens) {
  e.tokens = tokens;
  e.uses = 1;
  if (!e.parent.IsZero())
    if (auto it = index_.find(e.parent); it != index_.end())
      e.depth = it->second->depth + 1;
  const double cost = e.layout != nullptr ? static_cast<double>(e.layout->shape.num_layers) *
                                                e.layout->shape.block_size * (1.0 + e.depth)
                                          : 1.0;
  PolicyFor(e.tier).OnInsert({e.id, e.key, TierBytesLocked(e), cost});
  ChargeLocked(e);
  EmitLocked(KvEventType::kStored, e, e.tier, RemoveReason::kEvicted);
}

void BlockStore::OnMovedLocked(Entry& e, Tier from, bool evicted) {
  PolicyFor(from).OnRemove(e.id, evicted);
  const double cost = e.layout != nullptr ? static_cast<double>(e.layout->shape.num_layers) *
                                                e.layout->shape.block_size * (1.0 + e.depth)
                                          : 1.0 + e.depth;
  PolicyFor(e.tier).OnInsert({e.id, e.key, TierBytesLocked(e), cost});
  ChargeLocked(e);
  EmitLocked(KvEventType::kMoved, e, from, RemoveReason::kEvicted);
}

void BlockStore::OnRemovedLocked(Entry& e, RemoveReason reason) {
  if (e.charged_ns != 0 && e.charged_bytes != 0) {
    uint64_t& used = tenants_[e.charged_ns].used_bytes[T(e.charged_tier)];
    used -= std::min(used, e.charged_bytes);
    e.charged_bytes = 0;
  }
  if (!e.committed) return;
  PolicyFor(e.tier).OnRemove(e.id, true);
  ++policy_counters_.removed_by_reason[static_cast<int>(reason)];
  if (reason == RemoveReason::kInvalidated) ++policy_counters_.invalidated;
  EmitLocked(KvEventType::kRemoved, e, e.tier, reason);
}

void BlockStore::OnUsedLocked(Entry& e) {
  ++e.uses;
  PolicyFor(e.tier).OnAccess(e.id);
}

int BlockStore::PriorityClassLocked(const Entry& e) const {
  if (e.retain > 0) return 3;
  auto it = tenants_.find(TenantOfLocked(e));
  if (it == tenants_.end()) return 1;
  const uint64_t quota = it->second.quota_bytes[T(e.tier)];
  if (quota == 0) return 1;
  return it->second.used_bytes[T(e.tier)] > quota ? 0 : 2;
}

bool BlockStore::AdmitLocked(const Entry& e, Tier tier) {
  const TierPolicyOptions& o = tier == Tier::kHost ? options_.policy.host : options_.policy.ssd;
  if (o.admission_min_uses <= 0) return true;
  if (e.uses >= static_cast<uint32_t>(o.admission_min_uses) || e.children >= 2) return true;
  ++policy_counters_.admission_rejections[T(tier)];
  return false;
}

bool BlockStore::MakeTenantRoomLocked(uint64_t ns, Tier tier, uint64_t bytes) {
  if (ns == 0) return true;
  auto quota_of = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> std::pair<uint64_t, uint64_t> {
    auto it = tenants_.find(ns);
    if (it == tenants_.end()) return {0, 0};
    return {it->second.quota_bytes[T(tier)], it->second.used_bytes[T(tier)]};
  };
  auto [quota, used] = quota_of();
  if (quota == 0) return true;
  if (bytes > quota) return false;
  while (used + bytes > quota) {
    std::vector<Entry*> v = PickVictimsLocked(tier, 16, ns);
    if (v.empty()) return false;
    // Only as many as the excess needs.
    uint64_t freed = 0;
    size_t take = 0;
    while (take < v.size() && used + bytes > quota + freed) freed += TierBytesLocked(*v[take++]);
    v.resize(std::max<size_t>(take, 1));
    int64_t progress = 0;
    if (tier == Tier::kGpu) {
      const EvictOutcome o = PageOutLocked(std::move(v));
      progress = o.moved + o.dropped;
    } else if (tier == Tier::kHost && ssd_ != nullptr) {
      const EvictOutcome o = DemoteToSsdLocked(std::move(v));
      progress = o.moved + o.dropped;
    } else {  // host without SSD, or SSD: the tenant's own least valuable blocks are dropped
      std::vector<BlockKey> keys;
      for (Entry* e : v) {
        FreeBlockLocked(*e, /*dropped=*/true, tier == Tier::kSsd ? &keys : nullptr, RemoveReason::kQuota);
        ++progress;
      }
      if (!keys.empty()) (void)ssd_->Remove(keys);
    }
    policy_counters_.quota_evictions[T(tier)] += static_cast<uint64_t>(progress);
    if (progress == 0) return false;
    std::tie(quota, used) = quota_of();
    if (quota == 0) return true;
  }
  return true;
}

void BlockStore::RecordTransfer(bool from_ssd, uint64_t bytes, absl::Duration took) {
  const double s = absl::ToDoubleSeconds(took);
  if (bytes == 0 || s <= 0) return;
  double& bw = from_ssd ? ssd_bw_ : h2g_bw_;
  bw = 0.8 * bw + 0.2 * (static_cast<double>(bytes) / s);
}

double BlockStore::EtaSecondsLocked(const Entry& e) const {
  if (e.tier == Tier::kGpu) return 0;
  const double bytes = static_cast<double>(e.record_bytes);
  double eta = bytes / std::max(h2g_bw_, 1.0);
  if (e.tier == Tier::kSsd) eta += bytes / std::max(ssd_bw_, 1.0);
  return eta;
}

void BlockStore::ExpirePinsLocked() {
  const absl::Time now = absl::Now();
  std::vector<uint64_t> expired;
  for (const auto& [id, p] : retention_pins_)
    if (p.expires <= now) expired.push_back(id);
  for (uint64_t id : expired) {
    (void)ReleasePinLocked(id, 0);
    ++policy_counters_.pins_expired;
  }
}

absl::Status BlockStore::ReleasePinLocked(uint64_t pin_id, uint64_t tenant_ns) {
  auto it = retention_pins_.find(pin_id);
  if (it == retention_pins_.end() || (tenant_ns != 0 && it->second.tenant_ns != tenant_ns))
    return absl::NotFoundError(absl::StrCat("no pin ", pin_id, " of this tenant"));
  RetentionPin& p = it->second;
  if (p.hard) {
    const SessionId sid = kPinSessionBase | pin_id;
    if (auto pit = pins_.find(sid); pit != pins_.end()) {
      for (const auto& [bid, n] : pit->second)
        if (Entry* e = FindLocked(bid)) e->pins -= n;
      pins_.erase(pit);
    }
    KickMover();  // what the pin held in place may now need to move
  } else {
    for (BlockId bid : p.blocks)
      if (Entry* e = FindLocked(bid); e != nullptr && e->retain > 0) --e->retain;
  }
  TenantUsage& u = tenants_[p.tenant_ns];
  u.tenant_ns = p.tenant_ns;
  for (int t = 1; t <= 3; ++t) u.pinned_bytes[t] -= std::min(u.pinned_bytes[t], p.bytes[t]);
  if (u.retention_pins > 0) --u.retention_pins;
  retention_pins_.erase(it);
  return absl::OkStatus();
}

absl::Status BlockStore::ReleasePin(uint64_t pin_id, uint64_t tenant_ns) {
  MutexLock lock(&mu_);
  return ReleasePinLocked(pin_id, tenant_ns);
}

void BlockStore::DrainQuotasLocked() {
  std::vector<std::pair<uint64_t, Tier>> over;
  for (const auto& [ns, u] : tenants_)
    for (Tier t : {Tier::kGpu, Tier::kHost, Tier::kSsd})
      if (u.quota_bytes[T(t)] != 0 && u.used_bytes[T(t)] > u.quota_bytes[T(t)]) over.push_back({ns, t});
  for (const auto& [ns, t] : over) {
    if (stopping_) return;
    if (t == Tier::kSsd && ssd_ == nullptr) continue;
    (void)MakeTenantRoomLocked(ns, t, 0);  // what its pins hold stays until they end
  }
}

void BlockStore::RunPolicyMaintenance() {
  MutexLock lock(&mu_);
  ExpirePinsLocked();
  DrainQuotasLocked();
}

absl::Status BlockStore::SetTenantQuota(uint64_t tenant_ns, const TenantQuota& quota) {
  if (tenant_ns == 0) return absl::InvalidArgumentError("tenant namespace 0 is not a tenant");
  if (quota.ssd_bytes != 0 && ssd_ == nullptr)
    return absl::FailedPreconditionError("an SSD quota needs an SSD tier (ssd_dir)");
  MutexLock lock(&mu_);
  TenantUsage& u = tenants_[tenant_ns];
  u.tenant_ns = tenant_ns;
  u.quota_bytes[T(Tier::kGpu)] = quota.gpu_bytes;
  u.quota_bytes[T(Tier::kHost)] = quota.host_bytes;
  u.quota_bytes[T(Tier::kSsd)] = quota.ssd_bytes;
  KickMover();  // the mover drains whatever is now over quota
  KVTIER_LOG(kInfo, "tenant_quota") << "tenant_ns=" << tenant_ns << " gpu_bytes=" << quota.gpu_bytes
                                    << " host_bytes=" << quota.host_bytes << " ssd_bytes=" << quota.ssd_bytes;
  return absl::OkStatus();
}

BlockStore::KvSnapshot BlockStore::TakeSnapshot(uint64_t only_ns) const {
  MutexLock lock(&mu_);
  KvSnapshot s;
  s.next_seq = events_->next_seq();  // events are appended under mu_: this is exact
  for (const auto& [id, e] : entries_) {
    if (!e->committed || (only_ns != 0 && e->ns != only_ns)) continue;
    s.blocks.push_back({e->key, e->parent, e->layout_id, e->ns, e->tier, FormatInTierLocked(*e),
                        e->layout != nullptr ? e->layout->shape.block_size : 0});
  }
  return s;
}

absl::StatusOr<BlockStore::PinOutcome> BlockStore::PinPrefix(std::string_view tenant_salt, uint64_t layout_id,
                                                             std::span<const int32_t> tokens, int64_t ttl_ms,
                                                             bool hard) {
  if (ttl_ms <= 0 || ttl_ms > options_.policy.max_pin_ttl_ms)
    return absl::InvalidArgumentError(
        absl::StrCat("ttl_ms=", ttl_ms, " outside [1, ", options_.policy.max_pin_ttl_ms, "]"));
  const Layout* layout = layouts_.Find(layout_id);
  if (layout == nullptr) return absl::NotFoundError(absl::StrCat("unknown layout_id=", layout_id));
  const int bs = layout->shape.block_size;
  const std::vector<BlockKey> keys = PrefixKeys(layout_id, tenant_salt, tokens, bs);
  if (keys.empty()) return absl::InvalidArgumentError(absl::StrCat("fewer tokens than one block (", bs, ")"));
  const uint64_t ns = TenantNs(tenant_salt);
  MutexLock lock(&mu_);
  std::vector<Entry*> hits;
  for (const BlockKey& k : keys) {
    auto it = index_.find(k);
    if (it == index_.end()) break;
    hits.push_back(it->second);
  }
  if (hits.empty()) return absl::NotFoundError("no block of this prefix is cached");
  RetentionPin p;
  p.tenant_ns = ns;
  p.hard = hard;
  p.expires = absl::Now() + absl::Milliseconds(ttl_ms);
  for (Entry* e : hits) {
    p.blocks.push_back(e->id);
    if (hard) p.bytes[T(e->tier)] += TierBytesLocked(*e);
  }
  TenantUsage& u = tenants_[ns];
  u.tenant_ns = ns;
  if (hard)
    for (int t = 1; t <= 3; ++t)
      if (u.quota_bytes[t] != 0 && u.pinned_bytes[t] + p.bytes[t] > u.quota_bytes[t])
        return absl::ResourceExhaustedError(absl::StrCat(
            "pinning would hold ", u.pinned_bytes[t] + p.bytes[t], " bytes in the ", TierName(static_cast<Tier>(t)),
            " tier; the tenant's quota there is ", u.quota_bytes[t]));
  const uint64_t pin_id = next_pin_id_++;
  for (Entry* e : hits) {
    if (hard) {
      Pin(kPinSessionBase | pin_id, *e);
    } else {
      ++e->retain;
      Touch(*e);
    }
  }
  for (int t = 1; t <= 3; ++t) u.pinned_bytes[t] += p.bytes[t];
  ++u.retention_pins;
  ++policy_counters_.pins_created;
  PinOutcome out{pin_id, static_cast<int64_t>(hits.size()), absl::ToUnixMillis(p.expires)};
  retention_pins_.emplace(pin_id, std::move(p));
  return out;
}

absl::StatusOr<BlockStore::InvalidateOutcome> BlockStore::Invalidate(const InvalidateScope& scope) {
  std::vector<BlockKey> keys;
  if (scope.kind == InvalidateScope::Kind::kPrefix) {
    const Layout* layout = layouts_.Find(scope.layout_id);
    if (layout == nullptr) return absl::NotFoundError(absl::StrCat("unknown layout_id=", scope.layout_id));
    const int bs = layout->shape.block_size;
    const std::span<const int32_t> tokens(scope.tokens);
    if (tokens.size() < static_cast<size_t>(bs))
      return absl::InvalidArgumentError(absl::StrCat("a prefix needs at least one full block (", bs, " tokens)"));
    keys = PrefixKeys(scope.layout_id, scope.tenant_salt, tokens, bs);
  } else if (scope.kind == InvalidateScope::Kind::kTenant && scope.tenant_ns == 0) {
    return absl::InvalidArgumentError("no tenant named");
  } else if (scope.kind == InvalidateScope::Kind::kLayout && scope.layout_id == 0) {
    return absl::InvalidArgumentError("no layout named");
  }
  MutexLock lock(&mu_);
  // The targets, by id (entries may be freed while we wait below).
  std::vector<BlockId> targets;
  if (scope.kind == InvalidateScope::Kind::kPrefix) {
    // The block that ends the prefix, and every block chained below it (every cached continuation).
    auto it = index_.find(keys.back());
    if (it != index_.end()) {
      absl::flat_hash_map<BlockKey, std::vector<BlockId>> children;
      for (const auto& [id, e] : entries_)
        if (e->committed && !e->parent.IsZero()) children[e->parent].push_back(id);
      std::deque<BlockId> todo{it->second->id};
      while (!todo.empty()) {
        const BlockId id = todo.front();
        todo.pop_front();
        targets.push_back(id);
        if (auto c = children.find(FindLocked(id)->key); c != children.end())
          for (BlockId k : c->second) todo.push_back(k);
      }
    }
  } else {
    for (const auto& [id, e] : entries_)
      if (e->committed && (scope.kind == InvalidateScope::Kind::kTenant ? e->ns == scope.tenant_ns
                                                                       : e->layout_id == scope.layout_id))
        targets.push_back(id);
  }
  // Retention pins on what goes end with it.
  absl::flat_hash_set<BlockId> target_set(targets.begin(), targets.end());
  std::vector<uint64_t> pins_to_end;
  for (const auto& [pin_id, p] : retention_pins_)
    for (BlockId b : p.blocks)
      if (target_set.contains(b)) {
        pins_to_end.push_back(pin_id);
        break;
      }
  for (uint64_t pin_id : pins_to_end) (void)ReleasePinLocked(pin_id, 0);
  InvalidateOutcome out;
  std::vector<Entry*> live;
  for (BlockId id : targets)
    if (Entry* e = FindLocked(id)) live.push_back(e);
  (void)WaitNotMoving(live);  // entries are looked up again below
  std::vector<BlockKey> ssd_keys;
  for (BlockId id : targets) {
    Entry* e = FindLocked(id);
    if (e == nullptr) continue;
    if (e->pins > 0 || e->moving) {
      ++out.skipped_pinned;
      continue;
    }
    FreeBlockLocked(*e, /*dropped=*/false, &ssd_keys, RemoveReason::kInvalidated);
    ++out.removed;
  }
  if (!ssd_keys.empty() && ssd_ != nullptr) (void)ssd_->Remove(ssd_keys);
  KVTIER_LOG(kInfo, "invalidate") << "scope=" << static_cast<int>(scope.kind) << " removed=" << out.removed
                                  << " skipped_pinned=" << out.skipped_pinned;
  return out;
}

absl::StatusOr<BlockStore::WarmOutcome> BlockStore::Warm(SessionId session, std::string_view tenant_salt,
                                                         uint64_t layout_id, std::span<const int32_t> tokens,
                                                         Tier target) {
  const Layout* layout = layouts_.Find(layout_id);
  if (layout == nullptr) return absl::NotFoundError(absl::StrCat("unknown layout_id=", layout_id));
  if (target != Tier::kGpu && target != Tier::kHost)
    return absl::InvalidArgumentError("warm-up target must be the GPU or the host tier");
  WarmOutcome out;
  if (target == Tier::kGpu) {
    tls_warming = true;
    auto found = Lookup(session, tenant_salt, layout_id, tokens, /*pin=*/false, /*promote=*/false);
    auto hit = found.ok() ? Lookup(session, tenant_salt, layout_id, tokens, /*pin=*/true, /*promote=*/true) : found;
    tls_warming = false;
    if (!hit.ok()) return hit.status();
    out.found = static_cast<int64_t>(found->blocks.size());
    out.in_target = static_cast<int64_t>(hit->blocks.size());
    std::vector<BlockId> ids;
    for (const auto& b : hit->blocks) ids.push_back(b.block_id);
    if (auto st = Release(session, ids); !st.ok()) return st;
  } else {
    const int bs = layout->shape.block_size;
    const std::vector<BlockKey> keys = PrefixKeys(layout_id, tenant_salt, tokens, bs);
    MutexLock lock(&mu_);
    std::vector<BlockId> ids;
    for (const BlockKey& k : keys) {
      auto it = index_.find(k);
      if (it == index_.end()) break;
      ids.push_back(it->second->id);
    }
    out.found = static_cast<int64_t>(ids.size());
    std::vector<Entry*> from_ssd;
    for (BlockId id : ids) {
      Entry* e = FindLocked(id);
      Pin(session, *e);
      if (e->tier == Tier::kSsd) from_ssd.push_back(e);
    }
    if (!from_ssd.empty() && WaitNotMoving(from_ssd)) {
      std::vector<Entry*> still;
      for (Entry* e : from_ssd)
        if (e->tier == Tier::kSsd) still.push_back(e);
      std::vector<Entry*> deferred;
      (void)PromoteFromSsdLocked(std::move(still), &deferred);
    }
    for (BlockId id : ids) {
      Entry* e = FindLocked(id);
      if (e == nullptr) break;  // dropped as corrupt: the prefix ends here
      if (e->tier == Tier::kSsd) break;
      ++out.in_target;
    }
    for (BlockId id : ids)
      if (Entry* e = FindLocked(id)) Unpin(session, *e);
  }
  MutexLock lock(&mu_);
  policy_counters_.warmed_blocks += static_cast<uint64_t>(out.in_target);
  return out;
}

PolicyStats BlockStore::GetPolicyStats() const {
  MutexLock lock(&mu_);
  PolicyStats s = policy_counters_;
  s.lookup_blocks_requested = counters_.lookup_blocks_requested;
  for (Tier t : {Tier::kGpu, Tier::kHost, Tier::kSsd}) s.eviction_policy[T(t)] = std::string(eviction_[T(t)]->name());
  s.host_to_gpu_bytes_per_second = h2g_bw_;
  s.ssd_read_bytes_per_second = ssd_bw_;
  s.event_next_seq = events_->next_seq();
  s.pins_active = retention_pins_.size();
  for (const auto& [id, p] : retention_pins_) s.pinned_blocks_by_pins += p.blocks.size();
  for (const auto& [id, e] : entries_)
    if (e->retain > 0) ++s.retention_hint_blocks;
  for (const auto& [ns, u] : tenants_) s.tenants.push_back(u);
  std::sort(s.tenants.begin(), s.tenants.end(),
            [](const TenantUsage& a, const TenantUsage& b) { return a.tenant_ns < b.tenant_ns; });
  return s;
}

}  // namespace kvtier
