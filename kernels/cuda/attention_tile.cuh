// Staging of KV tiles for the CUDA attention kernels: cp.async copies of one tile (kAttnTile tokens =
// whole blocks) of one KV head's raw K/V codes and block parameters from the paged pool into shared
// memory. Addressing goes through PagedKvView; the kernels only see the staged layout:
//   [K rows (row_k bytes each, k_pitch apart)] [V rows (v_pitch apart)] [K params per block] [V params]
// A pitch larger than the row pads rows (the tensor-core kernel reads rows with ldmatrix; padding by
// 16 bytes keeps its eight row addresses in distinct banks).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention/paged_kv.h"

namespace kvtier::cuda_attn {

inline constexpr int kAttnTile = 64;  // tokens per staged tile (a multiple of every block size)

struct TileLayout {
  uint32_t row_k = 0, row_v = 0;      // bytes of one token's codes in the page (head_dim * bits / 8)
  uint32_t k_pitch = 0, v_pitch = 0;  // bytes between staged rows (>= row, multiple of 16)
  uint32_t k_seg_param_bytes = 0, v_seg_param_bytes = 0;  // parameter bytes of one segment
  uint32_t v_off = 0, kp_off = 0, vp_off = 0;             // offsets inside a stage
  uint32_t stage_bytes = 0;
};

inline TileLayout MakeTileLayout(int head_dim, int block_size, int k_bits, int v_bits, uint32_t k_param_bytes,
                                 uint32_t v_param_bytes, bool pad_rows) {
  auto align16 = [](uint32_t x) { return (x + 15u) / 16u * 16u; };
  TileLayout t;
  t.row_k = static_cast<uint32_t>(head_dim * k_bits / 8);
  t.row_v = static_cast<uint32_t>(head_dim * v_bits / 8);
  t.k_pitch = t.row_k + (pad_rows ? 16u : 0u);
  t.v_pitch = t.row_v + (pad_rows ? 16u : 0u);
  t.k_seg_param_bytes = k_param_bytes;
  t.v_seg_param_bytes = v_param_bytes;
  const uint32_t blocks = static_cast<uint32_t>(kAttnTile / block_size);
  t.v_off = t.k_pitch * kAttnTile;
  t.kp_off = t.v_off + t.v_pitch * kAttnTile;
  t.vp_off = align16(t.kp_off + blocks * k_param_bytes);
  t.stage_bytes = align16(t.vp_off + blocks * v_param_bytes);
  return t;
}

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void CpAsync4(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// Pipeline depth of the decode kernel: as many stages as fit a 76 KiB shared-memory budget, so that 3
// CTAs stay resident per SM (the kernels are latency-bound: resident warps matter more than depth); 2 to
// 6 stages. `param_bytes` estimates one tile's parameter bytes (DecodeTileParamBytes); the host sizes
// shared memory from the real layout, so the estimate only steers the depth.
constexpr int DecodeStagesFor(int head_dim, int k_bits, int v_bits, int param_bytes) {
  const int stage = kAttnTile * (head_dim * (k_bits + v_bits) / 8 + 32) + param_bytes;
  const int budget = 76 * 1024;
  const int n = budget / stage;
  return n < 2 ? 2 : n > 6 ? 6 : n;
}

// Parameter bytes of one tile with the default codecs at block size 16: per-channel K (int8: fp16
// scale, int4: scale + offset per channel and block), per-token V (int8: one fp16 scale per token, int4:
// a pair per 32 channels), fp8: one float per segment.
constexpr int DecodeTileParamBytes(int head_dim, int k_bits, int v_bits, bool k_fp8) {
  const int blocks = kAttnTile / 16;
  const int k = k_fp8 ? 4 * blocks : k_bits == 8 ? 2 * head_dim * blocks : k_bits == 4 ? 4 * head_dim * blocks : 0;
  const int v = k_fp8 ? 4 * blocks : v_bits == 8 ? 2 * kAttnTile : v_bits == 4 ? 4 * kAttnTile * (head_dim / 32) : 0;
  return k + v;
}

// Slots of the (up to kAttnTile / 16) blocks of one tile; 0 for blocks past the sequence's end.
struct TileSlots {
  int32_t slot[kAttnTile / 16];
};

// Reads the block-table entries of tile `tile`. Kernels fetch them one iteration ahead of LoadTile so
// that the global-load latency of the block table is off the pipeline's critical path.
__device__ __forceinline__ TileSlots FetchTileSlots(const PagedKvView& kv, int seq, int len, int tile) {
  const int bs = kv.block_size;
  const int blocks_in_seq = (len + bs - 1) / bs;
  const int block0 = tile * kAttnTile / bs;
  TileSlots t;
#pragma unroll
  for (int j = 0; j < kAttnTile / 16; ++j)
    t.slot[j] = (j < kAttnTile / bs && block0 + j < blocks_in_seq) ? kv.Slot(seq, block0 + j) : 0;
  return t;
}

// Issues the copies of tile `tile` (tokens [tile * kAttnTile, +kAttnTile)) of sequence `seq`, run head
// `h`, into `stage`, whose layout L must be MakeTileLayout(D, block_size, bits, bits, ..., kPad). kRowK /
// kRowV are the bytes of one token's K / V codes (compile-time, so the copy loops need no divisions);
// `slots` comes from FetchTileSlots(tile). Blocks at or past the sequence's end are not copied (their
// staged bytes are stale; callers mask those tokens). All kThreads threads of the CTA must call it.
template <int kThreads, int kRowK, int kRowV, bool kPad>
__device__ __forceinline__ void LoadTile(const PagedKvView& kv, const TileLayout& L, const TileSlots& slots, int h,
                                         int len, int tile, uint8_t* stage) {
  constexpr int kChunksK = kRowK / 16, kChunksV = kRowV / 16;
  constexpr int kPitchK = kRowK + (kPad ? 16 : 0), kPitchV = kRowV + (kPad ? 16 : 0);
  const int bs = kv.block_size;
  const int blocks_in_seq = (len + bs - 1) / bs;
  const int block0 = tile * kAttnTile / bs;
  const int nb = min(kAttnTile / bs, blocks_in_seq - block0);
  const int kpw = static_cast<int>(L.k_seg_param_bytes / 4), vpw = static_cast<int>(L.v_seg_param_bytes / 4);
#pragma unroll
  for (int j = 0; j < kAttnTile / 16; ++j) {
    if (j >= nb) break;
    const int32_t slot = slots.slot[j];
    const uint8_t* ksrc = kv.KData(slot, h);
    const uint8_t* vsrc = kv.VData(slot, h);
    uint8_t* kdst = stage + j * bs * kPitchK;
    uint8_t* vdst = stage + L.v_off + j * bs * kPitchV;
    for (int i = threadIdx.x; i < bs * kChunksK; i += kThreads)
      CpAsync16(kdst + (i / kChunksK) * kPitchK + (i % kChunksK) * 16, ksrc + i * 16);
    for (int i = threadIdx.x; i < bs * kChunksV; i += kThreads)
      CpAsync16(vdst + (i / kChunksV) * kPitchV + (i % kChunksV) * 16, vsrc + i * 16);
    for (int i = threadIdx.x; i < kpw + vpw; i += kThreads) {
      if (i < kpw) {
        CpAsync4(stage + L.kp_off + j * L.k_seg_param_bytes + 4 * i, kv.KParams(slot, h) + 4 * i);
      } else {
        CpAsync4(stage + L.vp_off + j * L.v_seg_param_bytes + 4 * (i - kpw), kv.VParams(slot, h) + 4 * (i - kpw));
      }
    }
  }
}

}  // namespace kvtier::cuda_attn
