// SsdTier::SetCapacity: growing adds slab files; shrinking drains the highest-numbered slabs.
//
// Draining. New allocations stop using the slabs being removed (alloc_limit_). Each record in them is
// then copied verbatim (a record does not depend on where it lives) into free space of the remaining
// slabs and re-indexed. kDropWhatDoesNotFit: newest first (relocate_first before all); records that do
// not fit, or that fail verification on the way, are dropped and reported. kKeepRecords: slab by slab from
// the highest down; the first slab with a record that cannot be moved stays, with every slab below it,
// and its records stay where they are (only records that fail verification are dropped). Finally the
// drained slabs leave the allocator and their files are unlinked once the last I/O or reader holding them
// lets go. Commits and removals are held off (commit_mu_) for the duration, so a Put racing with the
// shrink either lands in a surviving slab or fails cleanly.
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

absl::StatusOr<SsdCapacityChange> SsdTier::SetCapacity(uint64_t bytes, std::span<const BlockKey> relocate_first,
                                                       SsdShrinkMode mode) {
  const uint32_t want = static_cast<uint32_t>(std::max<uint64_t>(1, bytes / slab_bytes_));
  const bool keep_records = mode == SsdShrinkMode::kKeepRecords;
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
    if (keep_records && a.resident.entry.extent.slab != b.resident.entry.extent.slab)
      return a.resident.entry.extent.slab > b.resident.entry.extent.slab;  // highest slab first
    const bool fa = first.contains(a.key), fb = first.contains(b.key);
    if (fa != fb) return fa;
    return a.resident.entry.sequence > b.resident.entry.sequence;
  });

  std::vector<BlockKey> dropped;
  uint32_t keep_slabs = want;  // slabs [0, keep_slabs) stay
  // A record that could not be moved: dropped, or (kKeepRecords) its slab stays.
  bool stuck = false;
  auto not_moved = [&](const BlockKey& key) {
    if (keep_records) {
      stuck = true;
    } else {
      dropped.push_back(key);
    }
  };
  for (size_t begin = 0; begin < victims.size() && !stuck;) {
    size_t end = std::min(victims.size(), begin + kRelocateBatch);
    const uint32_t slab = victims[begin].resident.entry.extent.slab;
    if (keep_records) {  // a batch never spans two slabs: a slab that must stay is known before a lower one moves
      for (size_t i = begin + 1; i < end; ++i)
        if (victims[i].resident.entry.extent.slab != slab) {
          end = i;
          break;
        }
    }
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
      const bool intact = h.ok() && h->key == victims[i].key;
      if (r.status.ok() && !intact) {  // read fine but corrupt: unreadable by anyone, dropped in either mode
        dropped.push_back(victims[i].key);
        continue;
      }
      std::shared_ptr<ExtentLease> lease;
      if (intact) lease = AllocateLease(victims[i].resident.entry.extent.length, want);
      if (!lease) {
        not_moved(victims[i].key);
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
        not_moved(v.key);
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
    begin = end;
    if (stuck) keep_slabs = slab + 1;
    if (puts.empty()) continue;
    if (absl::Status s = index_->Apply(puts, {}, /*sync=*/true); !s.ok()) {
      for (const SsdIndex::Put& p : puts) not_moved(p.key);
      if (stuck) keep_slabs = slab + 1;
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
  if (keep_slabs > want) {
    ssd::ReaderMutexLock lock(&mu_);
    for (const auto& [key, r] : map_)
      if (r.entry.extent.slab >= want && r.entry.extent.slab < keep_slabs) {
        change.kept_in_place.push_back(key);
        change.kept_in_place_bytes.push_back(r.entry.extent.length);
      }
  }

  ssd::MutexLock lock(&alloc_mu_);
  for (uint32_t id = keep_slabs; id < have; ++id) {
    allocator_.RemoveSlab(id);
    slab_epochs_.erase(id);
    slabs_.at(id)->MarkForDeletion();
    slabs_.erase(id);
  }
  alloc_limit_ = UINT32_MAX;
  change.capacity_bytes = allocator_.capacity_bytes();
  if (keep_slabs > want) {
    Log(absl::StrFormat("ssd_shrink_incomplete slabs=%d wanted=%d relocated=%d dropped=%d kept_in_place=%d",
                        keep_slabs, want, change.relocated, change.dropped.size(), change.kept_in_place.size()));
  } else {
    Log(absl::StrFormat("ssd_shrink slabs=%d relocated=%d dropped=%d", want, change.relocated, change.dropped.size()));
  }
  return change;
}

}  // namespace kvtier
