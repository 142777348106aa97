// PagedKvView: the only code that turns (sequence, token, KV head) into pointers into the page pool.
//
// The pool is `num_slots` pages of geometry.page_bytes() each (slot s at data + s * page_bytes); the
// page table's device mirror of parameters is `num_slots` records of geometry.param_bytes() each (slot s
// at params + s * param_bytes). A sequence is a row of the block table (slot ids, one per block of
// `block_size` tokens) plus a length.
//
// A view covers one layer and one *head run*: consecutive KV heads whose K codecs are equal and whose V
// codecs are equal. Inside a run, consecutive heads' segments are a constant stride apart (each segment
// is the same size, aligned to 16 bytes), so a view needs no per-head table. The common case (one format
// per layer) is one run covering every KV head; a per-head precision policy gives several runs.
//
// The view is a plain struct usable on host and device; it holds no ownership. Host code builds it with
// MakePagedKvView (attention.h) after validation, so device code never checks bounds.
#pragma once

#include <cstdint>

#include "kernels/common.h"
#include "kernels/format.h"

namespace kvtier {

struct PagedKvView {
  const uint8_t* data = nullptr;    // pool data: [num_slots][page_bytes]
  const uint8_t* params = nullptr;  // parameter mirror: [num_slots][param_bytes]; null if param_bytes == 0
  uint64_t page_bytes = 0;
  uint32_t param_bytes = 0;
  const int32_t* block_table = nullptr;  // [num_seqs][block_table_stride] slot ids
  int32_t block_table_stride = 0;
  int32_t block_size = 0;  // tokens per block
  int32_t first_head = 0;  // KV head index (in the layout) of head 0 of this run
  // Offsets inside a page of head `first_head`'s segments, and the stride between consecutive heads.
  uint64_t k_data_offset = 0, v_data_offset = 0;
  uint32_t k_data_stride = 0, v_data_stride = 0;
  uint32_t k_param_offset = 0, v_param_offset = 0;
  uint32_t k_param_stride = 0, v_param_stride = 0;

  // Slot holding block `block` (0-based, block = token / block_size) of sequence `seq`.
  KVTIER_HD int32_t Slot(int seq, int block) const {
    return block_table[static_cast<int64_t>(seq) * block_table_stride + block];
  }
  // Start of the K (V) segment of run head `h` in the page at `slot`: [block_size][head_dim] codes.
  KVTIER_HD const uint8_t* KData(int32_t slot, int h) const {
    return data + static_cast<uint64_t>(slot) * page_bytes + k_data_offset + static_cast<uint64_t>(h) * k_data_stride;
  }
  KVTIER_HD const uint8_t* VData(int32_t slot, int h) const {
    return data + static_cast<uint64_t>(slot) * page_bytes + v_data_offset + static_cast<uint64_t>(h) * v_data_stride;
  }
  // Start of the K (V) segment's parameter groups (see segment.h GroupOf); meaningless for pass-through.
  KVTIER_HD const uint8_t* KParams(int32_t slot, int h) const {
    return params + static_cast<uint64_t>(slot) * param_bytes + k_param_offset +
           static_cast<uint64_t>(h) * k_param_stride;
  }
  KVTIER_HD const uint8_t* VParams(int32_t slot, int h) const {
    return params + static_cast<uint64_t>(slot) * param_bytes + v_param_offset +
           static_cast<uint64_t>(h) * v_param_stride;
  }
};

}  // namespace kvtier
