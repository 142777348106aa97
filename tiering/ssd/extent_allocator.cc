#include "tiering/ssd/extent_allocator.h"

#include <cassert>
#include <iterator>

namespace kvtier {

void ExtentAllocator::AddSlab(uint32_t slab, uint64_t bytes) {
  if (slabs_.contains(slab) || bytes == 0) return;
  Slab& s = slabs_[slab];
  s.bytes = bytes;
  s.free = bytes;
  s.ranges[0] = bytes;
  capacity_ += bytes;
  free_ += bytes;
}

void ExtentAllocator::RemoveSlab(uint32_t slab) {
  auto it = slabs_.find(slab);
  if (it == slabs_.end()) return;
  capacity_ -= it->second.bytes;
  free_ -= it->second.free;
  slabs_.erase(it);
  if (cursor_slab_ == slab) cursor_offset_ = 0;
}

uint64_t ExtentAllocator::slab_bytes(uint32_t slab) const {
  auto it = slabs_.find(slab);
  return it == slabs_.end() ? 0 : it->second.bytes;
}

uint64_t ExtentAllocator::used_in_slab(uint32_t slab) const {
  auto it = slabs_.find(slab);
  return it == slabs_.end() ? 0 : it->second.bytes - it->second.free;
}

std::optional<Extent> ExtentAllocator::Allocate(uint64_t bytes, uint32_t exclude_from) {
  if (bytes == 0 || bytes > free_) return std::nullopt;
  // Two passes over the slabs in id order starting at the cursor: first only ranges at or after the
  // cursor (sequential fill), then everything (wrap-around).
  for (int pass = 0; pass < 2; ++pass) {
    for (auto sit = slabs_.lower_bound(pass == 0 ? cursor_slab_ : 0); sit != slabs_.end(); ++sit) {
      if (sit->first >= exclude_from) break;
      Slab& s = sit->second;
      if (s.free < bytes) continue;
      auto rit = s.ranges.begin();
      if (pass == 0 && sit->first == cursor_slab_) {
        // The range holding the cursor may start before it; allocate from its start all the same.
        rit = s.ranges.upper_bound(cursor_offset_);
        if (rit != s.ranges.begin()) {
          auto prev = std::prev(rit);
          if (prev->first + prev->second > cursor_offset_) rit = prev;
        }
      }
      for (; rit != s.ranges.end(); ++rit) {
        if (rit->second < bytes) continue;
        const Extent e{sit->first, rit->first, bytes};
        const uint64_t rest = rit->second - bytes;
        const uint64_t rest_offset = rit->first + bytes;
        s.ranges.erase(rit);
        if (rest > 0) s.ranges[rest_offset] = rest;
        s.free -= bytes;
        free_ -= bytes;
        cursor_slab_ = e.slab;
        cursor_offset_ = e.offset + bytes;
        return e;
      }
    }
  }
  return std::nullopt;
}

void ExtentAllocator::Free(const Extent& e) {
  auto sit = slabs_.find(e.slab);
  if (sit == slabs_.end() || e.length == 0) return;  // its slab was removed (drained) meanwhile
  Slab& s = sit->second;
  uint64_t offset = e.offset;
  uint64_t length = e.length;
  auto next = s.ranges.lower_bound(offset);
  assert(next == s.ranges.end() || next->first >= offset + length);  // not already free
  if (next != s.ranges.end() && next->first == offset + length) {
    length += next->second;
    next = s.ranges.erase(next);
  }
  if (next != s.ranges.begin()) {
    auto prev = std::prev(next);
    assert(prev->first + prev->second <= offset);  // not already free
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      length += prev->second;
      s.ranges.erase(prev);
    }
  }
  s.ranges[offset] = length;
  s.free += e.length;
  free_ += e.length;
}

bool ExtentAllocator::MarkUsed(const Extent& e) {
  auto sit = slabs_.find(e.slab);
  if (sit == slabs_.end() || e.length == 0) return false;
  Slab& s = sit->second;
  if (e.offset + e.length > s.bytes || e.offset + e.length < e.offset) return false;
  auto rit = s.ranges.upper_bound(e.offset);
  if (rit == s.ranges.begin()) return false;
  rit = std::prev(rit);
  const uint64_t r_off = rit->first;
  const uint64_t r_len = rit->second;
  if (r_off + r_len < e.offset + e.length) return false;  // not wholly inside one free range
  s.ranges.erase(rit);
  if (e.offset > r_off) s.ranges[r_off] = e.offset - r_off;
  if (r_off + r_len > e.offset + e.length) s.ranges[e.offset + e.length] = r_off + r_len - e.offset - e.length;
  s.free -= e.length;
  free_ -= e.length;
  return true;
}

}  // namespace kvtier
