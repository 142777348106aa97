// SsdTier::Audit: the invariants a crash must not break, checked from the outside of the data path.
//   - every index entry names a whole, verifying record of its own key (no entry without data);
//   - RocksDB and the in-memory index agree;
//   - no two entries share space, and the free-space map counts as used exactly the space the entries
//     hold (orphans of a crash between data write and index write are reclaimed).
#include <algorithm>

#include "tiering/ssd/record_codec.h"
#include "tiering/ssd/ssd_tier_internal.h"

namespace kvtier {

absl::StatusOr<SsdAudit> SsdTier::Audit(bool read_records) {
  SsdAudit a;
  std::vector<std::pair<BlockKey, Resident>> entries;
  {
    ssd::ReaderMutexLock lock(&mu_);
    for (const auto& [key, r] : map_) entries.emplace_back(key, r);
  }
  {
    ssd::MutexLock lock(&alloc_mu_);
    a.allocator_used_bytes = allocator_.used_bytes();
  }
  a.records = entries.size();
  std::vector<Extent> extents;
  for (const auto& [key, r] : entries) {
    a.record_bytes += r.entry.extent.length;
    extents.push_back(r.entry.extent);
  }
  std::sort(extents.begin(), extents.end(),
            [](const Extent& x, const Extent& y) { return x.slab != y.slab ? x.slab < y.slab : x.offset < y.offset; });
  for (size_t i = 1; i < extents.size(); ++i) {
    const Extent& p = extents[i - 1];
    if (p.slab == extents[i].slab && p.offset + p.length > extents[i].offset) ++a.overlapping;
  }
  if (a.allocator_used_bytes > a.record_bytes) a.leaked_bytes = a.allocator_used_bytes - a.record_bytes;

  absl::flat_hash_map<BlockKey, Extent> in_memory;
  for (const auto& [key, r] : entries) in_memory[key] = r.entry.extent;
  uint64_t indexed = 0;
  absl::Status scan = index_->ForEach([&](const BlockKey& key, const IndexEntry& e, std::string_view) {
    ++indexed;
    auto it = in_memory.find(key);
    if (it == in_memory.end() || !(it->second == e.extent)) ++a.index_only;
    return true;
  });
  if (!scan.ok()) return scan;
  const uint64_t matched = indexed - a.index_only;
  a.memory_only = entries.size() > matched ? entries.size() - matched : 0;

  if (read_records) {
    constexpr size_t kSlice = 64;
    for (size_t begin = 0; begin < entries.size(); begin += kSlice) {
      const size_t end = std::min(entries.size(), begin + kSlice);
      std::vector<ReadJob> jobs;
      for (size_t i = begin; i < end; ++i)
        jobs.push_back(WholeRead(entries[i].second.lease, entries[i].second.entry.extent.length));
      std::vector<ReadResult> reads = ReadExtents(jobs, absl::Now() + options_.io_timeout);
      for (size_t i = begin; i < end; ++i) {
        const ReadResult& r = reads[i - begin];
        if (!r.status.ok()) {
          ++a.unreadable;
          continue;
        }
        const IndexEntry& e = entries[i].second.entry;
        absl::StatusOr<RecordHeader> h =
            VerifyRecord(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(r.head.data()), r.head.size()));
        if (!h.ok() || h->key != entries[i].first || h->record_checksum != e.checksum ||
            h->stored_length != e.stored_length || h->raw_length != e.raw_length ||
            h->metadata_length != e.metadata_length || h->codec != e.codec) {
          ++a.corrupt;
        }
      }
    }
  }
  return a;
}

}  // namespace kvtier
