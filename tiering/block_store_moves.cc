// BlockStore: movement between tiers (page-out, page-in), eviction and the watermark mover.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "tiering/block_store.h"
#include "tiering/log.h"

namespace kvtier {

std::vector<BlockStore::Entry*> BlockStore::PickVictimsLocked(Tier tier, int64_t n) {
  const auto& set = tier == Tier::kGpu ? gpu_blocks_ : host_blocks_;
  std::vector<Entry*> candidates;
  for (BlockId id : set) {
    Entry* e = FindLocked(id);
    if (e->committed && e->pins == 0 && !e->moving) candidates.push_back(e);
  }
  // Leaves of the prefix tree first (their ancestors stay useful to other sequences), then LRU.
  auto order = [](const Entry* a, const Entry* b) {
    if ((a->children == 0) != (b->children == 0)) return a->children == 0;
    return a->last_use < b->last_use;
  };
  if (n > 0 && static_cast<size_t>(n) < candidates.size()) {
    std::partial_sort(candidates.begin(), candidates.begin() + n, candidates.end(), order);
    candidates.resize(n);
  } else {
    std::sort(candidates.begin(), candidates.end(), order);
  }
  return candidates;
}

bool BlockStore::MakeHostRoomLocked(uint64_t bytes) {
  while (!host_.HasRoom(bytes)) {
    std::vector<Entry*> v = PickVictimsLocked(Tier::kHost, 16);
    if (v.empty()) return false;
    for (Entry* e : v) {
      KVTIER_LOG(kDebug, "drop") << "block=" << e->id << " tier=host reason=capacity";
      FreeBlockLocked(*e, /*dropped=*/true);
      if (host_.HasRoom(bytes)) break;
    }
  }
  return true;
}

EvictOutcome BlockStore::PageOutLocked(std::vector<Entry*> victims) {
  EvictOutcome outcome;
  if (victims.empty()) return outcome;
  // Group by layout: one device batch per layout.
  absl::flat_hash_map<const Layout*, std::vector<Entry*>> by_layout;
  for (Entry* e : victims) by_layout[e->layout].push_back(e);
  for (auto& [layout, group] : by_layout) {
    const uint64_t record_bytes = layout->offload_record_bytes();
    std::vector<Entry*> moving;
    std::vector<std::unique_ptr<HostRecord>> records;
    for (Entry* e : group) {
      std::unique_ptr<HostRecord> r;
      if (MakeHostRoomLocked(record_bytes)) r = host_.Allocate(record_bytes);
      if (r == nullptr) {  // no room below: the block is dropped, never left half-moved
        FreeBlockLocked(*e, /*dropped=*/true);
        ++outcome.dropped;
        continue;
      }
      e->moving = true;
      moving.push_back(e);
      records.push_back(std::move(r));
    }
    if (moving.empty()) continue;
    std::vector<int32_t> slots;
    std::vector<uint8_t*> dst;
    for (size_t i = 0; i < moving.size(); ++i) {
      slots.push_back(moving[i]->slot);
      dst.push_back(records[i]->data());
    }
    PageArena* arena = ArenaLocked(*layout);
    mu_.Unlock();
    absl::Status st = device_->PageOut(*layout, *arena, slots, dst);
    if (st.ok())
      for (auto& r : records) r->checksum = RecordChecksum(r->data(), r->size());
    mu_.Lock();
    const uint64_t resident = ResidentBytes(*layout);
    for (size_t i = 0; i < moving.size(); ++i) {
      Entry& e = *moving[i];
      e.moving = false;
      if (!st.ok() || e.pins > 0) continue;  // failed, or pinned meanwhile: stays on the GPU
      arena->Free(e.slot);
      e.slot = -1;
      e.tier = Tier::kHost;
      e.host = std::move(records[i]);
      gpu_used_ -= resident;
      gpu_blocks_.erase(e.id);
      host_blocks_.insert(e.id);
      ++counters_.page_outs;
      if (resident > record_bytes) counters_.bytes_saved_by_quantization += resident - record_bytes;
      ++outcome.moved;
    }
    if (!st.ok()) KVTIER_LOG(kError, "page_out_failed") << "blocks=" << moving.size() << " error=\"" << st << "\"";
  }
  return outcome;
}

absl::flat_hash_set<BlockId> BlockStore::PageInLocked(std::vector<Entry*> blocks) {
  absl::flat_hash_set<BlockId> failed;
  absl::flat_hash_map<const Layout*, std::vector<Entry*>> by_layout;
  for (Entry* e : blocks) by_layout[e->layout].push_back(e);
  for (auto& [layout, group] : by_layout) {
    const uint64_t resident = ResidentBytes(*layout);
    PageArena* arena = ArenaLocked(*layout);
    std::vector<Entry*> moving;
    std::vector<int32_t> slots;
    for (Entry* e : group) {
      if (arena == nullptr || !MakeGpuRoomLocked(resident) || arena->free_slots() == 0) {
        failed.insert(e->id);
        continue;
      }
      if (RecordChecksum(e->host->data(), e->host->size()) != e->host->checksum) {
        KVTIER_LOG(kError, "checksum_mismatch") << "block=" << e->id << " tier=host action=drop";
        ++counters_.checksum_failures;
        failed.insert(e->id);
        FreeBlockLocked(*e, /*dropped=*/true);
        continue;
      }
      e->moving = true;
      slots.push_back(arena->Allocate());
      gpu_used_ += resident;  // reserved now so concurrent allocations see it
      moving.push_back(e);
    }
    if (moving.empty()) continue;
    std::vector<const uint8_t*> src;
    for (Entry* e : moving) src.push_back(e->host->data());
    mu_.Unlock();
    absl::Status st = device_->PageIn(*layout, *arena, slots, src);
    mu_.Lock();
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
      e.host.reset();
      host_blocks_.erase(e.id);
      gpu_blocks_.insert(e.id);
      ++counters_.page_ins;
    }
    if (!st.ok()) KVTIER_LOG(kError, "page_in_failed") << "blocks=" << moving.size() << " error=\"" << st << "\"";
  }
  return failed;
}

bool BlockStore::MakeGpuRoomLocked(uint64_t bytes) {
  while (gpu_used_ + bytes > gpu_limit_) {
    std::vector<Entry*> v = PickVictimsLocked(Tier::kGpu, 64);
    if (v.empty()) return false;
    const EvictOutcome o = PageOutLocked(std::move(v));
    if (o.moved == 0 && o.dropped == 0) return false;  // victims got pinned meanwhile; give up
  }
  return true;
}

EvictOutcome BlockStore::DemoteFromGpu(int64_t max_blocks) {
  MutexLock lock(&mu_);
  EvictOutcome total;
  do {
    const int64_t want = max_blocks > 0 ? std::min<int64_t>(max_blocks - total.moved - total.dropped, 256) : 256;
    if (want <= 0) break;
    std::vector<Entry*> v = PickVictimsLocked(Tier::kGpu, want);
    if (v.empty()) break;
    const EvictOutcome o = PageOutLocked(std::move(v));
    total.moved += o.moved;
    total.dropped += o.dropped;
    if (o.moved == 0 && o.dropped == 0) break;
  } while (true);
  KVTIER_LOG(kInfo, "demote") << "tier=gpu moved=" << total.moved << " dropped=" << total.dropped;
  return total;
}

absl::Status BlockStore::SetLimits(uint64_t gpu_pool_bytes, uint64_t host_tier_bytes) {
  MutexLock lock(&mu_);
  if (gpu_pool_bytes) {
    const uint64_t ceiling = options_.gpu_pool_bytes * options_.gpu_pool_growth_factor;
    if (gpu_pool_bytes > ceiling)
      return absl::InvalidArgumentError(absl::StrCat("gpu_pool_bytes above the reserved ceiling of ", ceiling));
    gpu_limit_ = gpu_pool_bytes;
  }
  if (host_tier_bytes) host_.set_capacity(host_tier_bytes);
  // Shrinking drains: host first (drops), then the GPU tier (demotes into what the host has left).
  MakeHostRoomLocked(0);
  MakeGpuRoomLocked(0);
  KVTIER_LOG(kInfo, "tier_limits") << "gpu_bytes=" << gpu_limit_ << " host_bytes=" << host_.capacity()
                                   << " gpu_used=" << gpu_used_ << " host_used=" << host_.used();
  return absl::OkStatus();
}

void BlockStore::MoverLoop() {
  MutexLock lock(&mu_);
  while (true) {
    auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || mover_kick_; };
    mu_.AwaitWithTimeout(wake, std::chrono::milliseconds(200));
    if (stopping_) return;
    mover_kick_ = false;
    if (gpu_used_ <= gpu_limit_ * options_.gpu_high_watermark) continue;
    const auto low = static_cast<uint64_t>(gpu_limit_ * options_.gpu_low_watermark);
    while (gpu_used_ > low && !stopping_) {
      std::vector<Entry*> v = PickVictimsLocked(Tier::kGpu, 64);
      if (v.empty()) break;
      const EvictOutcome o = PageOutLocked(std::move(v));
      if (o.moved == 0 && o.dropped == 0) break;
    }
  }
}

}  // namespace kvtier
