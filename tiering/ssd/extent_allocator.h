// ExtentAllocator: free space of the SSD tier's slab files, as sorted, coalesced free ranges per slab.
//
// The allocator is pure bookkeeping, rebuilt on every open from the index (everything the index does
// not reference is free: that is how orphans of a crash between a data write and its index write are
// reclaimed). Allocation is next-fit from a cursor that follows the last allocation, so a stream of puts
// fills a slab front to back and the disk sees sequential writes; the cursor wraps to the lowest free
// range when it reaches the end.
//
// Offsets and lengths are multiples of ssd_format::kBlockSize. Thread-compatible: the tier serializes
// calls with its own mutex.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace kvtier {

struct Extent {
  uint32_t slab = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  friend bool operator==(const Extent&, const Extent&) = default;
};

class ExtentAllocator {
 public:
  // Adds slab `slab` of `bytes` bytes, all free. No-op if it exists.
  void AddSlab(uint32_t slab, uint64_t bytes);
  // Forgets slab `slab`; the caller has moved or dropped everything in it.
  void RemoveSlab(uint32_t slab);
  bool HasSlab(uint32_t slab) const { return slabs_.contains(slab); }
  uint64_t slab_bytes(uint32_t slab) const;

  // An extent of `bytes`, or nullopt when no free range is that long. `exclude_from`: slabs with an id
  // >= this are not used (they are being drained).
  std::optional<Extent> Allocate(uint64_t bytes, uint32_t exclude_from = UINT32_MAX);
  // Returns an allocated extent.
  void Free(const Extent& e);
  // Marks `e` used (rebuilding from the index); false, changing nothing, if any part of it is not free
  // or lies outside its slab.
  bool MarkUsed(const Extent& e);

  uint64_t capacity_bytes() const { return capacity_; }
  uint64_t free_bytes() const { return free_; }
  uint64_t used_bytes() const { return capacity_ - free_; }
  // Bytes used in slab `slab`.
  uint64_t used_in_slab(uint32_t slab) const;

 private:
  struct Slab {
    uint64_t bytes = 0;
    uint64_t free = 0;
    std::map<uint64_t, uint64_t> ranges;  // offset -> length, disjoint, non-adjacent
  };

  std::map<uint32_t, Slab> slabs_;
  uint64_t capacity_ = 0;
  uint64_t free_ = 0;
  uint32_t cursor_slab_ = 0;
  uint64_t cursor_offset_ = 0;
};

}  // namespace kvtier
