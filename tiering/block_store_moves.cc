// BlockStore: movement between the GPU and host tiers (page-out, page-in), eviction and the watermark
// mover. The SSD tier's part is in block_store_ssd.cc.
#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tiering/block_store.h"
#include "tiering/log.h"

namespace kvtier {

std::vector<BlockStore::Entry*> BlockStore::PickVictimsLocked(Tier tier, int64_t n, uint64_t only_ns) {
  const auto& set = tier == Tier::kGpu ? gpu_blocks_ : tier == Tier::kHost ? host_blocks_ : ssd_blocks_;
  std::vector<EvictionCandidate> candidates;
  for (BlockId id : set) {
    Entry* e = FindLocked(id);
    if (e->committed && e->pins == 0 && !e->moving && (only_ns == 0 || e->ns == only_ns))
      candidates.push_back({id, e->children == 0, PriorityClassLocked(*e), 0});
  }
  // Quota class, then leaves of the prefix tree (their ancestors stay useful to other sequences), then
  // the tier's eviction policy (cache_policy.h, eviction_policy.h).
  const size_t want = n > 0 ? std::min(static_cast<size_t>(n), candidates.size()) : candidates.size();
  PolicyFor(tier).Rank(candidates, want);
  std::vector<Entry*> out;
  out.reserve(want);
  for (size_t i = 0; i < want; ++i) out.push_back(FindLocked(candidates[i].id));
  return out;
}

bool BlockStore::MakeHostRoomLocked(uint64_t bytes, bool may_drop) {
  // Clean copies first: freeing one loses nothing (its block is on the GPU), least recently used first.
  if (!host_.HasRoom(bytes) && !clean_copies_.empty()) {
    std::vector<Entry*> copies;
    for (BlockId id : clean_copies_)
      if (Entry* e = FindLocked(id); !e->moving) copies.push_back(e);
    std::sort(copies.begin(), copies.end(), [](const Entry* a, const Entry* b) { return a->last_use < b->last_use; });
    for (Entry* e : copies) {
      if (host_.HasRoom(bytes)) break;
      e->host.reset();
      clean_copies_.erase(e->id);
    }
  }
  while (!host_.HasRoom(bytes)) {
    std::vector<Entry*> v = PickVictimsLocked(Tier::kHost, 32);
    if (v.empty()) return false;
    {  // only as many as the shortfall needs
      const uint64_t short_by = host_.used() + bytes > host_.capacity() ? host_.used() + bytes - host_.capacity() : 0;
      uint64_t freed = 0;
      size_t take = 0;
      while (take < v.size() && freed < short_by) freed += v[take++]->record_bytes;
      v.resize(std::max<size_t>(take, 1));
    }
    if (ssd_ != nullptr) {
      const EvictOutcome o = DemoteToSsdLocked(std::move(v), may_drop);
      if (o.moved == 0 && o.dropped == 0) return false;
      continue;
    }
    if (!may_drop) return false;
    for (Entry* e : v) {
      KVTIER_LOG(kDebug, "drop") << "block=" << e->id << " tier=host reason=capacity";
      FreeBlockLocked(*e, /*dropped=*/true);
      if (host_.HasRoom(bytes)) break;
    }
  }
  return true;
}

EvictOutcome BlockStore::PageOutLocked(std::vector<Entry*> victims, bool may_drop) {
  EvictOutcome outcome;
  for (Entry* e : victims) e->moving = true;  // before anything below may release the lock
  // One device batch per (layout, first-block-of-sequence): sink blocks may use another offload format.
  absl::flat_hash_map<std::pair<const Layout*, bool>, std::vector<Entry*>> by_geometry;
  for (Entry* e : victims) by_geometry[{e->layout, e->parent.IsZero()}].push_back(e);
  for (auto& [geometry, group] : by_geometry) {
    const Layout* layout = geometry.first;
    const bool first_block = geometry.second;
    size_t next = 0;
    while (next < group.size()) {
      // Take host records for as many blocks as fit now; make room (possibly demoting to SSD) when
      // none does. A chunk is then converted in one device batch.
      std::vector<Entry*> chunk;
      std::vector<std::unique_ptr<HostRecord>> records;
      const uint64_t record_bytes = layout->offload_record_bytes(first_block);
      for (; next < group.size(); ++next) {
        Entry* e = group[next];
        if (e->pins > 0) {  // pinned since it was picked: stays on the GPU
          e->moving = false;
          continue;
        }
        if (e->host != nullptr) {  // its offload record is still there: no conversion, no new bytes
          e->moving = false;
          FinishPageOutLocked(*layout, *e, std::move(e->host));
          ++counters_.clean_copy_reuses;
          ++outcome.moved;
          continue;
        }
        // The admission filter keeps it out of the host tier (a drain, !may_drop, never drops).
        if (may_drop && !AdmitLocked(*e, Tier::kHost)) {
          e->moving = false;
          FreeBlockLocked(*e, /*dropped=*/true, nullptr, RemoveReason::kAdmission);
          ++outcome.dropped;
          continue;
        }
        if (!MakeTenantRoomLocked(e->ns, Tier::kHost, record_bytes) || e->pins > 0) {
          e->moving = false;
          if (e->pins > 0 || !may_drop) continue;  // pinned meanwhile, or a drain: stays on the GPU
          FreeBlockLocked(*e, /*dropped=*/true, nullptr, RemoveReason::kQuota);  // its tenant's host quota is full
          ++outcome.dropped;
          continue;
        }
        std::unique_ptr<HostRecord> r = host_.Allocate(record_bytes);
        // Making room may release the lock (host -> SSD), and a lookup may pin the block meanwhile.
        if (r == nullptr && chunk.empty() && MakeHostRoomLocked(record_bytes, may_drop))
          r = host_.Allocate(record_bytes);
        if (r == nullptr || e->pins > 0) {
          if (r == nullptr && !chunk.empty()) break;  // convert what we have, then try again for the rest
          e->moving = false;
          if (e->pins > 0 || !may_drop) continue;  // pinned, or a drain: stays on the GPU
          FreeBlockLocked(*e, /*dropped=*/true);  // no room below at all: dropped, never left half-moved
          ++outcome.dropped;
          continue;
        }
        chunk.push_back(e);
        records.push_back(std::move(r));
      }
      if (chunk.empty()) continue;
      const EvictOutcome o = PageOutChunkLocked(*layout, layout->offload_for(first_block), chunk, records);
      outcome.moved += o.moved;
    }
  }
  return outcome;
}

void BlockStore::FinishPageOutLocked(const Layout& layout, Entry& e, std::unique_ptr<HostRecord> record) {
  const uint64_t resident = ResidentBytes(layout);
  ArenaLocked(layout)->Free(e.slot);
  e.slot = -1;
  e.tier = Tier::kHost;
  e.record_bytes = record->size();
  e.record_checksum = record->checksum;
  e.host = std::move(record);
  gpu_used_ -= resident;
  gpu_blocks_.erase(e.id);
  clean_copies_.erase(e.id);
  host_blocks_.insert(e.id);
  ++counters_.page_outs;
  if (resident > e.record_bytes) counters_.bytes_saved_by_quantization += resident - e.record_bytes;
  OnMovedLocked(e, Tier::kGpu, /*evicted=*/true);
}

EvictOutcome BlockStore::PageOutChunkLocked(const Layout& layout, const PageGeometry& offload,
                                            std::span<Entry* const> chunk,
                                            std::span<std::unique_ptr<HostRecord>> records) {
  EvictOutcome outcome;
  std::vector<int32_t> slots;
  std::vector<uint8_t*> dst;
  for (size_t i = 0; i < chunk.size(); ++i) {
    slots.push_back(chunk[i]->slot);
    dst.push_back(records[i]->data());
  }
  PageArena* arena = ArenaLocked(layout);
  mu_.Unlock();
  const absl::Time started = absl::Now();
  absl::Status st = device_->PageOut(layout, offload, *arena, slots, dst);
  if (st.ok())
    for (auto& r : records) r->checksum = RecordChecksum(r->data(), r->size());
  latencies_.page_out.Record(absl::Now() - started);
  mu_.Lock();
  for (size_t i = 0; i < chunk.size(); ++i) {
    Entry& e = *chunk[i];
    e.moving = false;
    if (!st.ok() || e.pins > 0) continue;  // failed, or pinned meanwhile: stays on the GPU
    FinishPageOutLocked(layout, e, std::move(records[i]));
    ++outcome.moved;
  }
  if (!st.ok()) {
    KVTIER_LOG(kError, "page_out_failed") << "blocks=" << chunk.size() << " error=\"" << st << "\"";
  }
  return outcome;
}

absl::flat_hash_set<BlockId> BlockStore::PageInLocked(std::vector<Entry*> blocks) {
  absl::flat_hash_set<BlockId> failed;
  for (Entry* e : blocks) e->moving = true;  // before anything below may release the lock
  absl::flat_hash_map<std::pair<const Layout*, bool>, std::vector<Entry*>> by_geometry;
  for (Entry* e : blocks) {
    const Layout* layout = ResolveLayoutLocked(*e);
    if (layout == nullptr) {
      e->moving = false;
      failed.insert(e->id);
      continue;
    }
    by_geometry[{layout, e->parent.IsZero()}].push_back(e);
  }
  for (auto& [geometry, group] : by_geometry) {
    const Layout* layout = geometry.first;
    const PageGeometry& offload = layout->offload_for(geometry.second);
    const uint64_t resident = ResidentBytes(*layout);
    PageArena* arena = ArenaLocked(*layout);
    // The records' checksums, verified before they go up: on several threads and outside the table lock
    // (the blocks are marked moving, so nobody frees or moves them meanwhile).
    std::vector<std::pair<const uint8_t*, uint64_t>> records;
    for (Entry* e : group) records.emplace_back(e->host->data(), e->host->size());
    std::vector<uint64_t> sums(group.size());
    mu_.Unlock();
    RecordChecksums(records, sums, static_cast<int>(std::clamp(std::thread::hardware_concurrency() / 2, 1u, 8u)));
    mu_.Lock();
    std::vector<Entry*> moving;
    std::vector<int32_t> slots;
    for (size_t g = 0; g < group.size(); ++g) {
      Entry* e = group[g];
      if (sums[g] != e->host->checksum) {
        ++counters_.checksum_failures;
        failed.insert(e->id);
        e->moving = false;
        if (e->ssd_copy && e->tier == Tier::kHost) {
          // A flushed block: the bad host record goes, the block lives on from its SSD copy (verified
          // end to end again when it is promoted).
          KVTIER_LOG(kError, "checksum_mismatch") << "block=" << e->id << " tier=host action=fall_back_to_ssd_copy";
          e->host.reset();
          e->tier = Tier::kSsd;
          e->record_checksum = e->ssd_copy_checksum;
          ForgetSsdCopyLocked(*e);
          host_blocks_.erase(e->id);
          ssd_blocks_.insert(e->id);
          continue;
        }
        KVTIER_LOG(kError, "checksum_mismatch") << "block=" << e->id << " tier=host action=drop";
        FreeBlockLocked(*e, /*dropped=*/true, nullptr, RemoveReason::kCorrupt);
        continue;
      }
      if (arena == nullptr || !MakeTenantRoomLocked(e->ns, Tier::kGpu, resident) || !MakeGpuRoomLocked(resident) ||
          arena->free_slots() == 0) {
        failed.insert(e->id);
        e->moving = false;
        continue;
      }
      slots.push_back(arena->Allocate());
      gpu_used_ += resident;  // reserved now so concurrent allocations see it
      moving.push_back(e);
    }
    if (moving.empty()) continue;
    std::vector<const uint8_t*> src;
    for (Entry* e : moving) src.push_back(e->host->data());
    mu_.Unlock();
    const absl::Time started = absl::Now();
    absl::Status st = device_->PageIn(*layout, offload, *arena, slots, src);
    const absl::Duration took = absl::Now() - started;
    latencies_.page_in.Record(took);
    mu_.Lock();
    if (st.ok()) RecordTransfer(/*from_ssd=*/false, moving.size() * layout->offload_record_bytes(geometry.second), took);
    for (size_t i = 0; i < moving.size(); ++i) {
      Entry& e = *moving[i];
      e.moving = false;
      if (!st.ok()) {
        arena->Free(slots[i]);
        gpu_used_ -= resident;
        failed.insert(e.id);
        continue;
      }
      e.slot = slots[i];
      e.tier = Tier::kGpu;
      host_blocks_.erase(e.id);
      gpu_blocks_.insert(e.id);
      clean_copies_.insert(e.id);  // the record stays as the block's clean copy
      ++counters_.page_ins;
      OnMovedLocked(e, Tier::kHost, /*evicted=*/false);
    }
    if (!st.ok()) {
      KVTIER_LOG(kError, "page_in_failed") << "blocks=" << moving.size() << " error=\"" << st << "\"";
    }
  }
  return failed;
}

bool BlockStore::MakeGpuRoomLocked(uint64_t bytes) {
  while (gpu_used_ + bytes > gpu_limit_) {
    std::vector<Entry*> v = PickVictimsLocked(Tier::kGpu, 64);
    if (v.empty()) return false;
    // Only as many as the shortfall needs: evicting more than that throws away what the policy kept.
    uint64_t freed = 0;
    size_t take = 0;
    while (take < v.size() && gpu_used_ + bytes > gpu_limit_ + freed) freed += ResidentBytes(*v[take++]->layout);
    v.resize(std::max<size_t>(take, 1));
    const EvictOutcome o = PageOutLocked(std::move(v));
    if (o.moved == 0 && o.dropped == 0) return false;  // victims got pinned meanwhile; give up
  }
  return true;
}

EvictOutcome BlockStore::DemoteFromGpu(int64_t max_blocks) {
  MutexLock lock(&mu_);
  EvictOutcome total;
  while (true) {
    const int64_t want = max_blocks > 0 ? std::min<int64_t>(max_blocks - total.moved - total.dropped, 256) : 256;
    if (want <= 0) break;
    std::vector<Entry*> v = PickVictimsLocked(Tier::kGpu, want);
    if (v.empty()) break;
    const EvictOutcome o = PageOutLocked(std::move(v));
    total.moved += o.moved;
    total.dropped += o.dropped;
    if (o.moved == 0 && o.dropped == 0) break;
  }
  KVTIER_LOG(kInfo, "demote") << "tier=gpu moved=" << total.moved << " dropped=" << total.dropped;
  return total;
}

EvictOutcome BlockStore::DemoteFromHost(int64_t max_blocks) {
  MutexLock lock(&mu_);
  EvictOutcome total;
  while (ssd_ != nullptr) {
    const int64_t want = max_blocks > 0 ? std::min<int64_t>(max_blocks - total.moved - total.dropped, 256) : 256;
    if (want <= 0) break;
    std::vector<Entry*> v = PickVictimsLocked(Tier::kHost, want);
    if (v.empty()) break;
    const EvictOutcome o = DemoteToSsdLocked(std::move(v));
    total.moved += o.moved;
    total.dropped += o.dropped;
    if (o.moved == 0 && o.dropped == 0) break;
  }
  KVTIER_LOG(kInfo, "demote") << "tier=host moved=" << total.moved << " dropped=" << total.dropped;
  return total;
}

absl::Status BlockStore::SetLimits(uint64_t gpu_pool_bytes, uint64_t host_tier_bytes, uint64_t ssd_tier_bytes) {
  if (ssd_tier_bytes != 0 && ssd_ == nullptr)
    return absl::FailedPreconditionError("no SSD tier is configured (ssd_dir)");
  MutexLock lock(&mu_);
  if (gpu_pool_bytes) {
    const uint64_t ceiling = options_.gpu_pool_bytes * options_.gpu_pool_growth_factor;
    if (gpu_pool_bytes > ceiling)
      return absl::InvalidArgumentError(absl::StrCat("gpu_pool_bytes above the reserved ceiling of ", ceiling));
    gpu_limit_ = gpu_pool_bytes;
  }
  if (ssd_tier_bytes) {
    mu_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return !ssd_resizing_; });  // one resize at a time
    ssd_resizing_ = true;
    absl::Status st;
    if (ssd_->SlabRoundedCapacity(ssd_tier_bytes) < ssd_->Stats().capacity_bytes) {
      st = ShrinkSsdLocked(ssd_tier_bytes);
    } else {
      mu_.Unlock();  // SSD I/O runs without the table lock
      auto change = ssd_->SetCapacity(ssd_tier_bytes);
      mu_.Lock();
      st = change.status();
    }
    ssd_resizing_ = false;
    if (!st.ok()) return st;
  }
  if (host_tier_bytes) host_.set_capacity(host_tier_bytes);
  // Shrinking drains: host first (to SSD, or dropped), then the GPU tier (demoted into what is left).
  MakeHostRoomLocked(0);
  MakeGpuRoomLocked(0);
  KVTIER_LOG(kInfo, "tier_limits") << "gpu_bytes=" << gpu_limit_ << " host_bytes=" << host_.capacity()
                                   << " gpu_used=" << gpu_used_ << " host_used=" << host_.used();
  return absl::OkStatus();
}

void BlockStore::SetSsdShrinkHookForTesting(std::function<void()> hook) {
  MutexLock lock(&mu_);
  ssd_shrink_hook_ = std::move(hook);
}

void BlockStore::BeginSsdWriteLocked() {
  mu_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return !ssd_writes_held_; });
  ++ssd_writes_in_flight_;
}

void BlockStore::EndSsdWriteLocked() { --ssd_writes_in_flight_; }

void BlockStore::ForgetDroppedSsdRecordsLocked(std::span<const BlockKey> dropped, RemoveReason reason) {
  for (const BlockKey& k : dropped) {
    auto it = index_.find(k);
    if (it == index_.end()) continue;
    if (Entry* e = it->second; e != nullptr && e->tier == Tier::kSsd && !e->moving) {
      std::vector<BlockKey> already_gone;  // the SSD tier dropped these records itself
      FreeBlockLocked(*e, /*dropped=*/true, &already_gone, reason);
    } else if (e != nullptr && e->ssd_copy) {
      ForgetSsdCopyLocked(*e);  // only a copy: the block itself lives above
    }
  }
}

// Shrinking the SSD tier. The decision of what to drop is made here, under the table lock, and never by
// the SSD tier (which knows nothing of pins):
//   1. SSD writes are held off (BeginSsdWriteLocked) and the ones in flight finish, so that no demotion
//      or Flush fills the room made below while the lock is released.
//   2. Unpinned SSD blocks (least valuable first) and SSD copies of blocks that live above are evicted
//      until what is left fits in the new size.
//   3. The SSD tier moves the records of the removed slabs with kKeepRecords: it never drops a readable
//      record, so a block pinned after step 2 (a deduplicated Commit pins a block wherever it lives) is
//      kept whatever happens; where a record cannot move, the tier stops above the requested size.
//   4. If it stopped above, the unpinned blocks left in the slabs it kept are evicted (or, when only
//      pinned ones are left there, as many bytes of unpinned blocks elsewhere as they hold, for room) and
//      it tries again, twice at most: what then stays is pinned (or being promoted), and the tier keeps the
//      smallest size that holds it.
absl::Status BlockStore::ShrinkSsdLocked(uint64_t ssd_tier_bytes) {
  const uint64_t target = ssd_->SlabRoundedCapacity(ssd_tier_bytes);
  ssd_writes_held_ = true;
  mu_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return ssd_writes_in_flight_ == 0; });
  absl::Status status;
  int64_t relocated = 0, evicted = 0;
  std::vector<BlockKey> kept_in_place;
  std::vector<uint64_t> kept_bytes;
  // Evicts unpinned SSD blocks (and copies) until the tier holds at most `bytes`.
  auto evict_down_to = [&](uint64_t bytes) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const SsdTierStats st = ssd_->Stats();
    if (st.used_bytes <= bytes) return;
    const uint64_t before = counters_.blocks_dropped;
    MakeSsdRoomLocked(st.capacity_bytes - bytes, /*may_drop=*/true);
    evicted += static_cast<int64_t>(counters_.blocks_dropped - before);
  };
  bool evicted_for_room = false;
  for (int round = 0; round < 3; ++round) {
    if (round == 0) {
      evict_down_to(target);
    } else {
      // Stopped above the target. First the unpinned blocks left in the slabs it kept; if only pinned (or
      // moving) ones are left there, the room below is too full or too fragmented for them: evict as much
      // again as they hold (least valuable first) and try once more.
      std::vector<BlockKey> keys;
      uint64_t stuck_bytes = 0;
      for (size_t i = 0; i < kept_in_place.size(); ++i) {
        auto it = index_.find(kept_in_place[i]);
        if (it == index_.end()) continue;
        Entry* e = it->second;
        if (e->moving || e->pins > 0 || !e->committed) {
          stuck_bytes += kept_bytes[i];
        } else if (e->tier == Tier::kSsd) {
          FreeBlockLocked(*e, /*dropped=*/true, &keys);
          ++evicted;
        } else if (e->ssd_copy) {
          keys.push_back(e->key);
          ForgetSsdCopyLocked(*e);
        }
      }
      if (!keys.empty()) {
        (void)ssd_->Remove(keys);
      } else {
        const uint64_t goal = std::min(ssd_->Stats().used_bytes, target);
        if (evicted_for_room || stuck_bytes == 0 || stuck_bytes >= goal) break;  // nothing more to gain
        evicted_for_room = true;
        const int64_t before = evicted;
        evict_down_to(goal - stuck_bytes);
        if (evicted == before) break;
      }
    }
    std::function<void()> hook = ssd_shrink_hook_;
    mu_.Unlock();  // SSD I/O runs without the table lock
    if (hook) hook();
    absl::StatusOr<SsdCapacityChange> change = ssd_->SetCapacity(ssd_tier_bytes, {}, SsdShrinkMode::kKeepRecords);
    mu_.Lock();
    if (!change.ok()) {
      status = change.status();
      break;
    }
    relocated += change->relocated;
    ForgetDroppedSsdRecordsLocked(change->dropped, RemoveReason::kCorrupt);  // failed verification: data gone
    counters_.checksum_failures += change->dropped.size();
    kept_in_place = std::move(change->kept_in_place);
    kept_bytes = std::move(change->kept_in_place_bytes);
    if (change->capacity_bytes <= target || kept_in_place.empty()) break;
  }
  ssd_writes_held_ = false;
  const SsdTierStats st = ssd_->Stats();
  if (status.ok() && st.capacity_bytes > target) {
    KVTIER_LOG(kWarning, "ssd_shrink_incomplete")
        << "requested_bytes=" << ssd_tier_bytes << " capacity_bytes=" << st.capacity_bytes
        << " used_bytes=" << st.used_bytes << " kept_in_place=" << kept_in_place.size()
        << " relocated=" << relocated << " evicted=" << evicted;
  } else {
    KVTIER_LOG(kInfo, "ssd_shrink") << "capacity_bytes=" << st.capacity_bytes << " used_bytes=" << st.used_bytes
                                    << " relocated=" << relocated << " evicted=" << evicted << " status=\"" << status
                                    << "\"";
  }
  return status;
}

void BlockStore::KickMover() {
  {
    std::lock_guard<std::mutex> lock(mover_mu_);
    mover_kick_ = true;
  }
  mover_cv_.notify_one();
}

void BlockStore::MoverLoop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mover_mu_);
      mover_cv_.wait_for(lock, std::chrono::milliseconds(200), [this] { return mover_stop_ || mover_kick_; });
      if (mover_stop_) return;
      mover_kick_ = false;
    }
    MutexLock lock(&mu_);
    if (stopping_) return;
    ExpirePinsLocked();   // retention pins past their TTL
    DrainQuotasLocked();  // tenants over a (lowered) quota give back their excess
    if (gpu_used_ > gpu_limit_ * options_.gpu_high_watermark) {
      const auto low = static_cast<uint64_t>(gpu_limit_ * options_.gpu_low_watermark);
      while (gpu_used_ > low && !stopping_) {
        std::vector<Entry*> v = PickVictimsLocked(Tier::kGpu, 64);
        if (v.empty()) break;
        const EvictOutcome o = PageOutLocked(std::move(v));
        if (o.moved == 0 && o.dropped == 0) break;
      }
    }
    if (ssd_ != nullptr && host_.used() > host_.capacity() * options_.host_high_watermark) {
      const auto low = static_cast<uint64_t>(host_.capacity() * options_.host_low_watermark);
      while (host_.used() > low && !stopping_) {
        std::vector<Entry*> v = PickVictimsLocked(Tier::kHost, 64);
        if (v.empty()) break;
        const EvictOutcome o = DemoteToSsdLocked(std::move(v));
        if (o.moved == 0 && o.dropped == 0) break;
      }
    }
  }
}

}  // namespace kvtier
