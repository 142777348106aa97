// SsdTier::SetCapacity: growing adds slab files; shrinking drains the highest-numbered slabs.
//
// Draining. New allocations stop using the slabs being removed (alloc_limit_). Each record in them is
// then copied verbatim (a record does not depend on where it lives) into free space of the remaining
// slabs, newest first, and re-indexed; records that do not fit, or that fail verification on the way,
// are dropped and reported. Finally the slabs leave the allocator and their files are unlinked once the
// last I/O or reader holding them lets go. Commits are held off (commit_mu_) for the duration, so a Put
// racing with the shrink either lands in a surviving slab or fails cleanly.
#include <algorithm>

#include "absl/container/flat_hash_set.h"

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "tiering/ssd/record_codec.h"
#include "tiering/ssd/ssd_tier_internal.h"

namespace kvtier {

namespace {
constexpr size_t kRelocateBatch = 16;
}  // namespace

absl::StatusOr<SsdCapacityChange> SsdTier::SetCapacity(uint64_t bytes, std::span<const BlockKey> relocate_first) {
  const uint32_t want = static_cast<uint32_t>(std::max<uint64_t>(1, bytes / slab_bytes_));
  SsdCapacityChange change;
  ssd::MutexLock commit(&commit_mu_);
  uint32_t have = 0;
  {
    ssd::MutexLock lock(&alloc_mu_);
    have = static_cast<uint32_t>(slabs_.size());
  }
  if (want > have) {
    const absl::Status s = AddSlabs(want);
    ssd::MutexLock lock(&alloc_mu_);
    change.capacity_bytes = allocator_.capacity_bytes();
    if (!s.ok()) {
      Log(absl::StrFormat("ssd_grow_partial slabs=%d wanted=%d reason=\"%s\"", slabs_.size(), want, s.message()));
      if (slabs_.size() == have) return s;
    }
    return change;
  }
  if (want == have) {
    change.capacity_bytes = static_cast<uint64_t>(have) * slab_bytes_;
    return change;
  }

  {
    ssd::MutexLock lock(&alloc_mu_);
    alloc_limit_ = want;
  }
  struct Victim {
    BlockKey key;
    Resident resident;
  };
  std::vector<Victim> victims;
  {
    ssd::ReaderMutexLock lock(&mu_);
    for (const auto& [key, r] : map_) {
      if (r.entry.extent.slab >= want) victims.push_back(Victim{key, r});
    }
  }
  const absl::flat_hash_set<BlockKey> first(relocate_first.begin(), relocate_first.end());
  std::sort(victims.begin(), victims.end(), [&](const Victim& a, const Victim& b) {
    const bool fa = first.contains(a.key), fb = first.contains(b.key);
    if (fa != fb) return fa;
    return a.resident.entry.sequence > b.resident.entry.sequence;
  });

  std::vector<BlockKey> dropped;
  for (size_t begin = 0; begin < victims.size(); begin += kRelocateBatch) {
    const size_t end = std::min(victims.size(), begin + kRelocateBatch);
    const absl::Time deadline = absl::Now() + options_.io_timeout;
    std::vector<ReadJob> reads;
    for (size_t i = begin; i < end; ++i)
      reads.push_back(WholeRead(victims[i].resident.lease, victims[i].resident.entry.extent.length));
    std::vector<ReadResult> data = ReadExtents(reads, deadline);
    std::vector<WriteJob> writes;
    std::vector<size_t> write_victim;
    for (size_t i = begin; i < end; ++i) {
      ReadResult& r = data[i - begin];
      absl::StatusOr<RecordHeader> h =
          r.status.ok()
              ? VerifyRecord(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(r.head.data()), r.head.size()))
              : absl::StatusOr<RecordHeader>(r.status);
      std::shared_ptr<ExtentLease> lease;
      if (h.ok() && h->key == victims[i].key) lease = AllocateLease(victims[i].resident.entry.extent.length, want);
      if (!lease) {
        dropped.push_back(victims[i].key);
        continue;
      }
      writes.push_back(WriteJob{std::move(lease), {std::string_view(r.head)}, absl::OkStatus()});
      write_victim.push_back(i);
    }
    WriteExtents(writes, deadline);
    std::vector<SsdIndex::Put> puts;
    std::vector<size_t> put_write;
    for (size_t n = 0; n < writes.size(); ++n) {
      const Victim& v = victims[write_victim[n]];
      if (!writes[n].status.ok()) {
        dropped.push_back(v.key);
        continue;
      }
      IndexEntry e = v.resident.entry;
      e.extent = writes[n].lease->extent();
      // The metadata lives in the record right after the header; the index keeps a copy of it.
      const std::string_view metadata =
          std::string_view(data[write_victim[n] - begin].head).substr(ssd_format::kHeaderSize, e.metadata_length);
      puts.push_back(SsdIndex::Put{v.key, e, metadata});
      put_write.push_back(n);
    }
    if (puts.empty()) continue;
    if (absl::Status s = index_->Apply(puts, {}, /*sync=*/true); !s.ok()) {
      for (const SsdIndex::Put& p : puts) dropped.push_back(p.key);
      continue;
    }
    std::vector<Resident> replaced;
    ssd::MutexLock lock(&mu_);
    for (size_t n = 0; n < puts.size(); ++n) {
      auto it = map_.find(puts[n].key);
      if (it == map_.end()) continue;
      replaced.push_back(std::move(it->second));
      it->second = Resident{puts[n].entry, writes[put_write[n]].lease};
      ++change.relocated;
    }
  }

  if (!dropped.empty()) {
    // Unlike a lost Remove, a lost drop here would leave an entry pointing into a deleted slab; Open drops
    // those anyway, but sync so the report is true at once.
    if (absl::Status s = index_->Apply({}, dropped, /*sync=*/true); !s.ok()) return s;
    std::vector<Resident> gone;
    ssd::MutexLock lock(&mu_);
    for (const BlockKey& k : dropped) {
      auto it = map_.find(k);
      if (it == map_.end() || it->second.entry.extent.slab < want) continue;
      gone.push_back(std::move(it->second));
      map_.erase(it);
    }
  }
  counters_->dropped_records.fetch_add(dropped.size());
  change.dropped = std::move(dropped);

  ssd::MutexLock lock(&alloc_mu_);
  for (uint32_t id = want; id < have; ++id) {
    allocator_.RemoveSlab(id);
    slab_epochs_.erase(id);
    slabs_.at(id)->MarkForDeletion();
    slabs_.erase(id);
  }
  alloc_limit_ = UINT32_MAX;
  change.capacity_bytes = allocator_.capacity_bytes();
  Log(absl::StrFormat("ssd_shrink slabs=%d relocated=%d dropped=%d", want, change.relocated, change.dropped.size()));
  return change;
}

}  // namespace kvtier
