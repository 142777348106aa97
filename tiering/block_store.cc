#include "tiering/block_store.h"

#include <algorithm>

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "tiering/log.h"

namespace kvtier {

namespace internal_policy {
// Set by BlockStore::Warm around its lookups (block_store_policy.cc): kept out of the lookup counters.
extern thread_local bool tls_warming;
}  // namespace internal_policy
using internal_policy::tls_warming;

namespace {
absl::Status DroppedDuringCall() {
  return absl::DataLossError("a block was dropped (its record failed verification) during the call");
}
}  // namespace

const char* TierName(Tier t) {
  switch (t) {
    case Tier::kGpu: return "gpu";
    case Tier::kHost: return "host";
    case Tier::kSsd: return "ssd";
  }
  return "?";
}


BlockStore::BlockStore(BlockStoreOptions options, std::unique_ptr<DeviceBackend> device,
                       std::unique_ptr<HostAllocator> host_allocator, std::unique_ptr<SsdTier> ssd)
    : options_(options),
      device_(std::move(device)),
      host_(options.host_tier_bytes, std::move(host_allocator)),
      ssd_(std::move(ssd)),
      gpu_limit_(options.gpu_pool_bytes) {
  events_ = std::make_unique<KvEventLog>(options_.policy.event_buffer);
  {
    MutexLock lock(&mu_);
    h2g_bw_ = options_.policy.host_to_gpu_bytes_per_second;
    ssd_bw_ = options_.policy.ssd_read_bytes_per_second;
    for (Tier t : {Tier::kGpu, Tier::kHost, Tier::kSsd}) {
      const TierPolicyOptions& o = t == Tier::kGpu    ? options_.policy.gpu
                                   : t == Tier::kHost ? options_.policy.host
                                                      : options_.policy.ssd;
      auto policy = MakeEvictionPolicy(o.eviction);
      if (!policy.ok()) {  // validated by the daemon's config check; fall back rather than die
        KVTIER_LOG(kError, "eviction_policy") << "tier=" << TierName(t) << " error=\"" << policy.status() << "\"";
        policy = MakeEvictionPolicy("lru");
      }
      eviction_[static_cast<int>(t)] = std::move(*policy);
    }
  }
  if (ssd_ != nullptr) RestoreFromSsd();
  mover_ = std::thread([this] { MoverLoop(); });
}

BlockStore::~BlockStore() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  {
    std::lock_guard<std::mutex> lock(mover_mu_);
    mover_stop_ = true;
  }
  mover_cv_.notify_all();
  mover_.join();
  MutexLock lock(&mu_);
  index_.clear();    // points into entries_
  entries_.clear();  // host records return their memory before host_ dies
}

absl::StatusOr<const Layout*> BlockStore::RegisterLayout(const LayoutSpec& spec) { return layouts_.Register(spec); }

BlockStore::Entry* BlockStore::FindLocked(BlockId id) {
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : it->second.get();
}

PageArena* BlockStore::ArenaLocked(const Layout& layout) {
  auto it = arenas_.find(layout.id);
  if (it != arenas_.end()) return it->second.get();
  const uint64_t reserve = std::max<uint64_t>(gpu_limit_, 1) * options_.gpu_pool_growth_factor;
  const auto slots = static_cast<int32_t>(std::min<uint64_t>(reserve / ResidentBytes(layout) + 1, INT32_MAX));
  auto arena = device_->CreateArena(layout, slots);
  if (!arena.ok()) {
    KVTIER_LOG(kError, "arena_create_failed") << "layout=" << layout.id << " error=\"" << arena.status() << "\"";
    return nullptr;
  }
  PageArena* out = arena->get();
  arenas_.emplace(layout.id, std::move(*arena));
  return out;
}

void BlockStore::Touch(Entry& e) { e.last_use = ++clock_; }

void BlockStore::Pin(SessionId s, Entry& e) {
  ++e.pins;
  ++pins_[s][e.id];
  Touch(e);
}

bool BlockStore::Unpin(SessionId s, Entry& e) {
  auto sit = pins_.find(s);
  if (sit == pins_.end()) return false;
  auto bit = sit->second.find(e.id);
  if (bit == sit->second.end()) return false;
  if (--bit->second == 0) sit->second.erase(bit);
  if (sit->second.empty()) pins_.erase(sit);
  --e.pins;
  return true;
}

bool BlockStore::WaitNotMoving(std::span<Entry* const> entries) {
  // By id, not by pointer: a block can be dropped (a corrupt record found by a promotion) while we wait.
  std::vector<BlockId> ids;
  for (const Entry* e : entries) ids.push_back(e->id);
  bool all_present = true;
  auto settled = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    all_present = true;
    for (BlockId id : ids) {
      const Entry* e = FindLocked(id);
      if (e == nullptr) {
        all_present = false;
      } else if (e->moving) {
        return false;
      }
    }
    return true;
  };
  mu_.Await(settled);
  return all_present;
}

void BlockStore::FreeBlockLocked(Entry& e, bool dropped, std::vector<BlockKey>* ssd_keys, RemoveReason reason) {
  OnRemovedLocked(e, reason);
  if (e.committed) {
    auto it = index_.find(e.key);
    if (it != index_.end() && it->second == &e) index_.erase(it);
    if (!e.parent.IsZero()) {
      auto pit = index_.find(e.parent);
      if (pit != index_.end()) --pit->second->children;
    }
  }
  if (e.tier == Tier::kGpu && e.slot >= 0) {
    ArenaLocked(*e.layout)->Free(e.slot);
    gpu_used_ -= ResidentBytes(*e.layout);
    gpu_blocks_.erase(e.id);
    clean_copies_.erase(e.id);
  } else if (e.tier == Tier::kHost) {
    host_blocks_.erase(e.id);
  }
  if (e.ssd_copy) ssd_copies_.erase(e.id);
  if (e.tier == Tier::kSsd || e.ssd_copy) {
    if (e.tier == Tier::kSsd) ssd_blocks_.erase(e.id);
    if (ssd_keys != nullptr) {
      ssd_keys->push_back(e.key);
    } else if (ssd_ != nullptr) {
      (void)ssd_->Remove(std::span<const BlockKey>(&e.key, 1));
    }
  }
  if (e.pins > 0) {
    // Dropped while pinned (it failed its checksum): the pins die with it.
    if (dropped) {
      ++counters_.pinned_blocks_dropped;
      KVTIER_LOG(kError, "pinned_block_dropped") << "block=" << e.id << " pins=" << e.pins
                                                 << " reason=" << RemoveReasonName(reason);
    }
    for (auto it = pins_.begin(); it != pins_.end();) {
      it->second.erase(e.id);
      if (it->second.empty()) {
        pins_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  if (dropped) ++counters_.blocks_dropped;
  entries_.erase(e.id);  // destroys e (and its host record)
}

bool BlockStore::GpuPageOutInFlightLocked() const {
  for (BlockId id : gpu_blocks_) {
    const auto it = entries_.find(id);
    if (it != entries_.end() && it->second->moving) return true;
  }
  return false;
}

bool BlockStore::AwaitGpuRoomLocked(PageArena& arena, uint64_t bytes, int slots) {
  const auto deadline = std::chrono::steady_clock::now() + options_.gpu_room_wait;
  while (!MakeGpuRoomLocked(bytes) || arena.free_slots() < slots) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !GpuPageOutInFlightLocked()) return false;
    const uint64_t used = gpu_used_;
    mu_.AwaitWithTimeout([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return gpu_used_ < used; }, left);
  }
  return true;
}

absl::StatusOr<std::vector<AllocatedBlock>> BlockStore::Allocate(SessionId session, uint64_t layout_id, int count) {
  if (count < 1 || count > options_.max_blocks_per_call)
    return absl::InvalidArgumentError(absl::StrCat("count=", count, " outside [1, ", options_.max_blocks_per_call, "]"));
  const Layout* layout = layouts_.Find(layout_id);
  if (layout == nullptr) return absl::NotFoundError(absl::StrCat("unknown layout_id=", layout_id));
  // Page-table entries are made before taking the table lock (malloc is not cheap under contention).
  std::vector<std::unique_ptr<Entry>> fresh(count);
  for (auto& e : fresh) e = std::make_unique<Entry>();
  std::vector<AllocatedBlock> out;
  out.reserve(count);
  MutexLock lock(&mu_);
  const uint64_t need = ResidentBytes(*layout) * static_cast<uint64_t>(count);
  PageArena* arena = ArenaLocked(*layout);
  if (arena == nullptr) return absl::ResourceExhaustedError("GPU pool arena could not be created");
  if (auto ns = session_ns_.find(session); ns != session_ns_.end() && !MakeTenantRoomLocked(ns->second, Tier::kGpu, need))
    return absl::ResourceExhaustedError(absl::StrCat("the tenant's GPU quota has no room for ", need,
                                                     " bytes (its own blocks there are pinned)"));
  if (!AwaitGpuRoomLocked(*arena, need, count))
    return absl::ResourceExhaustedError(absl::StrCat("GPU pool full: need ", need, " bytes, used ", gpu_used_,
                                                     " of ", gpu_limit_, " and nothing evictable"));
  std::vector<int32_t> slots(count);
  for (int32_t& s : slots) s = arena->Allocate();
  // Memory behind the slots now: the engine may write them in place through its mapping of the pool.
  absl::Status prepared = std::find(slots.begin(), slots.end(), -1) != slots.end()
                              ? absl::ResourceExhaustedError("the arena has no free slot left")
                              : device_->PrepareSlots(*arena, slots);
  if (!prepared.ok()) {
    for (int32_t s : slots)
      if (s >= 0) arena->Free(s);
    return absl::ResourceExhaustedError(absl::StrCat("GPU pool memory for ", count, " pages: ", prepared.message()));
  }
  for (int i = 0; i < count; ++i) {
    std::unique_ptr<Entry> e = std::move(fresh[i]);
    e->id = next_id_++;
    e->layout = layout;
    e->layout_id = layout->id;
    e->scale_set_id = layout->static_plan ? layout->static_plan->set->id : 0;
    e->owner = session;
    e->slot = slots[i];
    Touch(*e);
    out.push_back({e->id, e->slot});
    owned_[session].insert(e->id);
    gpu_blocks_.insert(e->id);
    ChargeLocked(*e);
    entries_.emplace(e->id, std::move(e));
  }
  gpu_used_ += need;
  if (gpu_used_ > gpu_limit_ * options_.gpu_high_watermark) KickMover();
  return out;
}

absl::Status BlockStore::Write(SessionId session, std::span<const BlockId> ids, std::span<const std::string_view> data) {
  if (ids.size() != data.size()) return absl::InvalidArgumentError("block ids and data counts differ");
  if (ids.empty()) return absl::OkStatus();
  MutexLock lock(&mu_);
  std::vector<Entry*> blocks;
  absl::flat_hash_set<BlockId> seen;
  for (size_t i = 0; i < ids.size(); ++i) {
    Entry* e = FindLocked(ids[i]);
    if (e == nullptr || e->committed || e->owner != session)
      return absl::NotFoundError(absl::StrCat("block ", ids[i], " is not a private block of this session"));
    if (!seen.insert(ids[i]).second) return absl::InvalidArgumentError(absl::StrCat("block ", ids[i], " written twice"));
    const uint64_t want = e->layout->activation_geometry.page_bytes();
    if (data[i].size() != want)
      return absl::InvalidArgumentError(
          absl::StrCat("block ", ids[i], ": ", data[i].size(), " bytes, the layout's block is ", want));
    if (blocks.size() && blocks.front()->layout != e->layout)
      return absl::InvalidArgumentError("one Write call must name blocks of one layout");
    blocks.push_back(e);
  }
  if (!WaitNotMoving(blocks)) return DroppedDuringCall();
  const Layout& layout = *blocks.front()->layout;
  PageArena* arena = ArenaLocked(layout);
  std::vector<int32_t> slots;
  std::vector<const uint8_t*> src;
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks[i]->moving = true;
    slots.push_back(blocks[i]->slot);
    src.push_back(reinterpret_cast<const uint8_t*>(data[i].data()));
  }
  mu_.Unlock();
  absl::Status st = device_->WriteActivations(layout, *arena, slots, src);
  if (st.ok() && calibrator_.active()) calibrator_.Observe(layout.id, session, layout.activation_geometry, src);
  mu_.Lock();
  for (Entry* e : blocks) e->moving = false;
  return st;
}

absl::Status BlockStore::Attend(SessionId session, uint64_t layout_id, std::span<const std::vector<BlockId>> blocks,
                               AttendBatch& batch) {
  const Layout* layout = layouts_.Find(layout_id);
  if (layout == nullptr) return absl::NotFoundError(absl::StrCat("unknown layout_id=", layout_id));
  MutexLock lock(&mu_);
  auto pinned = pins_.find(session);
  std::vector<Entry*> private_blocks;  // held in place during the call; pinned ones cannot move
  size_t stride = 0;
  for (const auto& seq : blocks) stride = std::max(stride, seq.size());
  batch.block_table.assign(blocks.size() * stride, 0);
  batch.block_table_stride = static_cast<int32_t>(stride);
  std::vector<Entry*> all;
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (size_t j = 0; j < blocks[i].size(); ++j) {
      const BlockId id = blocks[i][j];
      Entry* e = FindLocked(id);
      const bool owned = e != nullptr && !e->committed && e->owner == session;
      const bool pin = pinned != pins_.end() && pinned->second.contains(id);
      if (!owned && !pin) return absl::NotFoundError(absl::StrCat("block ", id, " is not owned or pinned by this session"));
      if (e->layout_id != layout_id) return absl::InvalidArgumentError(absl::StrCat("block ", id, " has another layout"));
      all.push_back(e);
      if (owned) private_blocks.push_back(e);
    }
  }
  if (!WaitNotMoving(all)) return DroppedDuringCall();
  for (size_t i = 0, k = 0; i < blocks.size(); ++i)
    for (size_t j = 0; j < blocks[i].size(); ++j, ++k) {
      Entry* e = all[k];
      if (e->tier != Tier::kGpu)
        return absl::FailedPreconditionError(
            absl::StrCat("block ", e->id, " is in the ", TierName(e->tier), " tier; Lookup with promote first"));
      batch.block_table[i * stride + j] = e->slot;
      Touch(*e);
    }
  for (Entry* e : private_blocks) e->moving = true;  // keeps the owner's Write and Release away
  const PageArena* arena = ArenaLocked(*layout);
  mu_.Unlock();
  absl::Status st = arena == nullptr ? absl::InternalError("no arena") : device_->Attend(*layout, *arena, batch);
  mu_.Lock();
  for (Entry* e : private_blocks) e->moving = false;
  return st;
}

absl::StatusOr<std::vector<std::string>> BlockStore::Read(SessionId session, std::span<const BlockId> ids) {
  MutexLock lock(&mu_);
  std::vector<Entry*> blocks;
  auto pinned = pins_.find(session);
  for (BlockId id : ids) {
    Entry* e = FindLocked(id);
    const bool visible = e != nullptr && ((!e->committed && e->owner == session) ||
                                          (pinned != pins_.end() && pinned->second.contains(id)));
    if (!visible) return absl::NotFoundError(absl::StrCat("block ", id, " is not owned or pinned by this session"));
    if (blocks.size() && blocks.front()->layout != e->layout)
      return absl::InvalidArgumentError("one Read call must name blocks of one layout");
    blocks.push_back(e);
  }
  if (blocks.empty()) return std::vector<std::string>{};
  if (!WaitNotMoving(blocks)) return DroppedDuringCall();
  for (Entry* e : blocks)
    if (e->tier != Tier::kGpu)
      return absl::FailedPreconditionError(
          absl::StrCat("block ", e->id, " is in the ", TierName(e->tier), " tier; Lookup with promote first"));
  const Layout& layout = *blocks.front()->layout;
  std::vector<std::string> out(blocks.size(), std::string(layout.activation_geometry.page_bytes(), '\0'));
  std::vector<int32_t> slots;
  std::vector<uint8_t*> dst;
  for (size_t i = 0; i < blocks.size(); ++i) {
    slots.push_back(blocks[i]->slot);
    dst.push_back(reinterpret_cast<uint8_t*>(out[i].data()));
    Touch(*blocks[i]);
  }
  // Private blocks are held in place against the owner's concurrent Write and Release; pinned committed
  // blocks cannot move or change, so concurrent readers of a shared prefix do not wait for each other.
  std::vector<Entry*> held;
  for (Entry* e : blocks)
    if (!e->committed) held.push_back(e);
  for (Entry* e : held) e->moving = true;
  PageArena* arena = ArenaLocked(layout);
  mu_.Unlock();
  absl::Status st = device_->ReadActivations(layout, *arena, slots, dst);
  mu_.Lock();
  for (Entry* e : held) e->moving = false;
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<std::vector<CommitOutcome>> BlockStore::Commit(SessionId session, std::string_view tenant_salt,
                                                               std::span<const CommitItem> items) {
  const uint64_t ns = XXH3_64bits(tenant_salt.data(), tenant_salt.size()) | 1;
  MutexLock lock(&mu_);
  // Validate everything first: a failed call changes nothing.
  absl::flat_hash_map<BlockKey, uint64_t> batch_keys;  // keys this call will produce -> layout id
  std::vector<Entry*> blocks;
  std::vector<BlockKey> parents, keys;
  absl::flat_hash_set<BlockId> seen;
  for (const CommitItem& item : items) {
    Entry* e = FindLocked(item.block_id);
    if (e == nullptr || e->owner != session || e->committed)
      return absl::NotFoundError(absl::StrCat("block ", item.block_id, " is not a private block of this session"));
    if (!seen.insert(item.block_id).second)
      return absl::InvalidArgumentError(absl::StrCat("block ", item.block_id, " committed twice in one call"));
    if (static_cast<int>(item.tokens.size()) != e->layout->shape.block_size)
      return absl::InvalidArgumentError(absl::StrCat("block ", item.block_id, ": ", item.tokens.size(),
                                                     " tokens, block_size is ", e->layout->shape.block_size));
    BlockKey parent;
    if (item.chain_previous) {
      if (keys.empty() || !item.parent_key.empty())
        return absl::InvalidArgumentError("chain_previous needs a previous entry and no parent_key");
      if (blocks.back()->layout != e->layout) return absl::InvalidArgumentError("parent block has another layout");
      parent = keys.back();
    } else if (!item.parent_key.empty()) {
      if (!BlockKey::FromBytes(item.parent_key, &parent))
        return absl::InvalidArgumentError("parent_key must be 16 bytes");
      auto bk = batch_keys.find(parent);
      uint64_t parent_layout = 0;
      if (bk != batch_keys.end()) {
        parent_layout = bk->second;
      } else if (auto it = index_.find(parent); it != index_.end()) {
        const Entry* p = it->second;
        if (p->ns == ns) parent_layout = p->layout_id;  // another tenant's key is as good as unknown
      }
      // Unknown parents are reported as NOT_FOUND whether they exist for another tenant or not at all.
      if (parent_layout == 0) return absl::NotFoundError("parent_key is not a published block");
      if (parent_layout != e->layout_id) return absl::InvalidArgumentError("parent block has another layout");
    }
    const BlockKey key = ChainKey(parent, e->layout->id, tenant_salt, item.tokens);
    batch_keys.emplace(key, e->layout_id);
    blocks.push_back(e);
    parents.push_back(parent);
    keys.push_back(key);
  }
  if (!WaitNotMoving(blocks)) return DroppedDuringCall();
  std::vector<CommitOutcome> out;
  for (size_t i = 0; i < blocks.size(); ++i) {
    Entry& e = *blocks[i];
    owned_[session].erase(e.id);
    if (auto it = index_.find(keys[i]); it != index_.end()) {
      // Someone published this prefix first: keep theirs, free ours, pin theirs for the session.
      Entry* existing = it->second;
      Pin(session, *existing);
      OnUsedLocked(*existing);
      out.push_back({keys[i], existing->id, true});
      ++counters_.blocks_deduplicated;
      FreeBlockLocked(e, /*dropped=*/false);
      continue;
    }
    e.committed = true;
    e.owner = 0;
    e.key = keys[i];
    e.parent = parents[i];
    e.ns = ns;
    index_.emplace(e.key, &e);
    if (!e.parent.IsZero())
      if (auto pit = index_.find(e.parent); pit != index_.end()) ++pit->second->children;
    Pin(session, e);
    OnStoredLocked(e, items[i].tokens);
    out.push_back({e.key, e.id, false});
    ++counters_.blocks_committed;
  }
  if (auto it = owned_.find(session); it != owned_.end() && it->second.empty()) owned_.erase(it);
  return out;
}

absl::StatusOr<LookupOutcome> BlockStore::Lookup(SessionId session, std::string_view tenant_salt,
                                                 uint64_t layout_id, std::span<const int32_t> tokens, bool pin,
                                                 bool promote) {
  const Layout* layout = layouts_.Find(layout_id);
  if (layout == nullptr) return absl::NotFoundError(absl::StrCat("unknown layout_id=", layout_id));
  const int bs = layout->shape.block_size;
  const size_t full_blocks = tokens.size() / bs;
  // Keys are computed before taking the lock: hashing is the bulk of a long lookup.
  const std::vector<BlockKey> keys = PrefixKeys(layout_id, tenant_salt, tokens, bs);
  MutexLock lock(&mu_);
  if (!tls_warming) {  // warm-up (block_store_policy.cc) is not lookup traffic
    ++counters_.lookups;
    counters_.lookup_blocks_requested += full_blocks;
  }
  // Two passes over hash tables far larger than the caches, each prefetching a few probes ahead: the
  // walk is a chain of independent misses otherwise (a 32K-token lookup is 2048 of each).
  constexpr size_t kAhead = 8;
  std::vector<Entry*> hits;
  hits.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i + kAhead < keys.size()) index_.prefetch(keys[i + kAhead]);
    auto it = index_.find(keys[i]);
    if (it == index_.end()) break;
    hits.push_back(it->second);
  }
  if (!tls_warming)
    for (Entry* e : hits) {  // hit rate per tier: where each block was found
      ++policy_counters_.lookup_hits_by_tier[static_cast<int>(e->tier)];
      OnUsedLocked(*e);
    }
  if (pin || promote)
    for (Entry* e : hits) Pin(session, *e);
  if (promote) {
    std::vector<BlockId> ids;
    for (Entry* e : hits) ids.push_back(e->id);
    const size_t keep = PromotePinnedLocked(session, ids);
    hits.clear();
    for (size_t i = 0; i < keep; ++i) hits.push_back(FindLocked(ids[i]));
  }
  LookupOutcome out;
  out.blocks.reserve(hits.size());
  for (Entry* e : hits) {
    Touch(*e);
    out.blocks.push_back({e->key, e->id, e->tier, e->tier == Tier::kGpu ? e->slot : -1, EtaSecondsLocked(*e)});
  }
  out.matched_tokens = static_cast<int32_t>(hits.size()) * bs;
  if (!tls_warming) counters_.lookup_blocks_hit += hits.size();
  return out;
}

size_t BlockStore::PromotePinnedLocked(SessionId session, std::span<const BlockId> ids) {
  // The blocks are pinned, so only promotions (this call's or a concurrent one's of the same prefix) move
  // them. Work on ids: a block that fails its checksum is dropped and its Entry freed.
  absl::flat_hash_set<BlockId> failed;
  for (int round = 0; round < 3; ++round) {
    std::vector<Entry*> live;
    for (BlockId id : ids)
      if (Entry* e = FindLocked(id)) live.push_back(e);  // a block dropped as corrupt is gone
    if (!WaitNotMoving(live)) continue;  // one was dropped: look again
    std::vector<Entry*> from_ssd, from_host;
    for (Entry* e : live) {
      if (e->tier == Tier::kSsd) from_ssd.push_back(e);
      if (e->tier == Tier::kHost) from_host.push_back(e);
    }
    if (from_ssd.empty() && from_host.empty()) break;
    // Host-resident blocks go up first (freeing host room), then SSD ones as host room allows.
    for (BlockId id : PageInLocked(std::move(from_host))) failed.insert(id);
    std::vector<Entry*> pending = std::move(from_ssd);
    while (!pending.empty() && failed.empty()) {
      std::vector<Entry*> deferred;
      std::vector<BlockId> asked;
      for (Entry* e : pending) asked.push_back(e->id);
      for (BlockId id : PromoteFromSsdLocked(std::move(pending), &deferred)) failed.insert(id);
      std::vector<Entry*> now_host;
      absl::flat_hash_set<BlockId> later;
      for (Entry* e : deferred) later.insert(e->id);
      for (BlockId id : asked)
        if (Entry* e = FindLocked(id); e != nullptr && e->tier == Tier::kHost && !later.contains(id))
          now_host.push_back(e);
      if (now_host.empty() && !deferred.empty()) {  // no host room at all: the prefix ends here
        for (Entry* e : deferred) failed.insert(e->id);
        break;
      }
      for (BlockId id : PageInLocked(std::move(now_host))) failed.insert(id);
      pending = std::move(deferred);
    }
    if (!failed.empty()) break;
  }
  // The prefix ends before the first block that could not be brought in; blocks past the cut are
  // unpinned again (dropped ones are gone, with their pins).
  size_t keep = 0;
  while (keep < ids.size() && !failed.contains(ids[keep]) && FindLocked(ids[keep]) != nullptr &&
         FindLocked(ids[keep])->tier == Tier::kGpu)
    ++keep;
  for (size_t i = keep; i < ids.size(); ++i)
    if (Entry* e = FindLocked(ids[i])) Unpin(session, *e);
  return keep;
}

absl::Status BlockStore::Release(SessionId session, std::span<const BlockId> ids) {
  MutexLock lock(&mu_);
  // Validate: every id must be pinned by or privately owned by the session (counting repeats).
  absl::flat_hash_map<BlockId, int32_t> wanted;
  for (BlockId id : ids) ++wanted[id];
  auto pinned = pins_.find(session);
  auto owned = owned_.find(session);
  for (const auto& [id, n] : wanted) {
    int32_t have = 0;
    if (pinned != pins_.end())
      if (auto it = pinned->second.find(id); it != pinned->second.end()) have = it->second;
    if (have == 0 && owned != owned_.end() && owned->second.contains(id)) have = 1;
    if (have < n) return absl::NotFoundError(absl::StrCat("block ", id, " is not pinned or owned by this session"));
  }
  std::vector<Entry*> blocks;
  for (const auto& [id, n] : wanted)
    if (Entry* e = FindLocked(id)) blocks.push_back(e);
  (void)WaitNotMoving(blocks);  // entries are looked up again below
  for (const auto& [id, n] : wanted) {
    Entry* e = FindLocked(id);
    if (e == nullptr) continue;
    if (!e->committed) {
      owned_[session].erase(id);
      FreeBlockLocked(*e, /*dropped=*/false);
      continue;
    }
    for (int32_t i = 0; i < n; ++i) Unpin(session, *e);
  }
  if (auto it = owned_.find(session); it != owned_.end() && it->second.empty()) owned_.erase(it);
  return absl::OkStatus();
}

void BlockStore::ReleaseSession(SessionId session) {
  MutexLock lock(&mu_);
  std::vector<Entry*> blocks;
  if (auto it = owned_.find(session); it != owned_.end())
    for (BlockId id : it->second)
      if (Entry* e = FindLocked(id)) blocks.push_back(e);
  (void)WaitNotMoving(blocks);
  // Re-read after waiting: the session's own in-flight calls may have changed its sets.
  if (auto it = owned_.find(session); it != owned_.end()) {
    const auto ids = it->second;
    for (BlockId id : ids)
      if (Entry* e = FindLocked(id); e != nullptr && !e->committed) FreeBlockLocked(*e, false);
    owned_.erase(session);
  }
  if (auto it = pins_.find(session); it != pins_.end()) {
    for (const auto& [id, n] : it->second)
      if (Entry* e = FindLocked(id)) e->pins -= n;
    pins_.erase(it);
  }
  session_ns_.erase(session);
}

int64_t BlockStore::PinnedBy(SessionId session) const {
  MutexLock lock(&mu_);
  int64_t n = 0;
  if (auto it = pins_.find(session); it != pins_.end())
    for (const auto& [id, c] : it->second) n += c;
  return n;
}

bool BlockStore::CorruptHostRecordForTest(BlockId id) {
  MutexLock lock(&mu_);
  Entry* e = FindLocked(id);
  if (e == nullptr || e->tier != Tier::kHost || e->moving) return false;
  e->host->data()[e->host->size() / 2] ^= 0x5a;
  return true;
}

StoreStats BlockStore::Stats() const {
  MutexLock lock(&mu_);
  StoreStats s = counters_;
  s.tiers.push_back({Tier::kGpu, gpu_limit_, gpu_used_, gpu_blocks_.size()});
  s.tiers.push_back({Tier::kHost, host_.capacity(), host_.used(), host_blocks_.size()});
  if (ssd_ != nullptr) {
    const SsdTierStats ss = ssd_->Stats();
    s.tiers.push_back({Tier::kSsd, ss.capacity_bytes, ss.used_bytes, ssd_blocks_.size()});
  }
  for (const auto& [sid, m] : pins_) s.pinned_blocks += m.size();
  s.layouts = layouts_.size();
  s.static_scale_clipped = layouts_.StaticScaleClipped();
  return s;
}

}  // namespace kvtier
