// PageArena: one layout's page slots in the GPU tier. Slot s holds a resident page at
// data() + s * page_bytes and its quantization parameters (the page table's device mirror, what the
// attention kernels read) at params() + s * param_bytes. The memory itself belongs to the device
// backend (device memory on a GPU, host memory on the host device); the arena hands out slot ids.
//
// Thread-safety: none; the BlockStore calls it under its own lock.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace kvtier {

class PageArena {
 public:
  // `release` frees the memory when the arena dies.
  PageArena(uint8_t* data, uint8_t* params, uint64_t page_bytes, uint32_t param_bytes, int32_t num_slots,
            std::function<void()> release);
  ~PageArena();
  PageArena(const PageArena&) = delete;
  PageArena& operator=(const PageArena&) = delete;

  uint8_t* data() const { return data_; }
  uint8_t* params() const { return params_; }
  uint64_t page_bytes() const { return page_bytes_; }
  uint32_t param_bytes() const { return param_bytes_; }
  int32_t num_slots() const { return num_slots_; }
  int32_t free_slots() const { return static_cast<int32_t>(free_.size()); }

  uint8_t* page(int32_t slot) const { return data_ + static_cast<uint64_t>(slot) * page_bytes_; }
  uint8_t* page_params(int32_t slot) const {
    return param_bytes_ ? params_ + static_cast<uint64_t>(slot) * param_bytes_ : nullptr;
  }

  // Takes one free slot, or -1 when none is left.
  int32_t Allocate();
  void Free(int32_t slot);

 private:
  uint8_t* data_;
  uint8_t* params_;
  uint64_t page_bytes_;
  uint32_t param_bytes_;
  int32_t num_slots_;
  std::vector<int32_t> free_;  // LIFO: recently freed slots are reused first (warm in cache/TLB)
  std::function<void()> release_;
};

}  // namespace kvtier
