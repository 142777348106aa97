#include "tiering/page_arena.h"

#include <cassert>

namespace kvtier {

PageArena::PageArena(uint8_t* data, uint8_t* params, uint64_t page_bytes, uint32_t param_bytes,
                     int32_t num_slots, std::function<void()> release)
    : data_(data),
      params_(params),
      page_bytes_(page_bytes),
      param_bytes_(param_bytes),
      num_slots_(num_slots),
      release_(std::move(release)) {
  free_.reserve(num_slots);
  for (int32_t s = num_slots - 1; s >= 0; --s) free_.push_back(s);
}

PageArena::~PageArena() {
  if (release_) release_();
}

int32_t PageArena::Allocate() {
  if (free_.empty()) return -1;
  const int32_t s = free_.back();
  free_.pop_back();
  return s;
}

void PageArena::Free(int32_t slot) {
  assert(slot >= 0 && slot < num_slots_);  // a slot id the arena handed out
  free_.push_back(slot);
}

}  // namespace kvtier
