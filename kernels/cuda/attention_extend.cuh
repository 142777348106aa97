// CUDA paged prefix-extend kernel (FA2-style, mma.sync m16n8k16 tensor cores), templated on head_dim
// and the K/V formats. Included only by the format-family .cu files through attention_dispatch.h.
//
// One CTA = (query tile x KV split, KV head, sequence). A query tile is 128 *rows*; row r is (new token r / G,
// query head r % G of the GQA group), so each KV tile is staged once for all query heads of the group.
// 8 warps own 16 rows each. KV tiles of 64 tokens are staged by LoadTile (3-stage cp.async, one barrier per
// tile; the causal mask is applied only on tiles that cross a warp's diagonal); 16-bit pages
// land in padded rows that the warps read directly with ldmatrix; quantized pages are first dequantized
// (scales and offsets applied, through the conversion layer) into a padded fp16 tile. S = Q K^T and
// O += P V run on tensor cores with fp32 accumulators; softmax is online in base 2; the causal mask
// compares each row's position (seq_len - n + token) with the key position.
//
// Split-KV: a few new rows over a long cached prefix (a prefix hit's last tokens) would be one CTA per KV
// head scanning the whole sequence. With num_splits > 1 each CTA takes only its split's range of KV tiles
// and writes its rows' normalized partial output and log2-sum-exp; a merge kernel (the decode path's)
// combines the splits. An empty range still writes its rows (lse = -inf) so that the merge ignores them.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/cuda/attention_convert.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/attention_tile.cuh"

namespace kvtier::cuda_attn {

inline constexpr int kExtendThreads = 256;
inline constexpr int kExtendRows = 128;  // query rows per CTA (16 per warp)
inline constexpr int kExtendStages = 3;  // cp.async pipeline depth (KV tiles)

struct ExtendKernelParams {
  PagedKvView kv;           // one head run of one layer; device block table
  const int32_t* seq_lens;  // device [num_seqs]
  const int32_t* q_indptr;  // device [num_seqs + 1]
  const void* q;            // [total_rows][num_q_heads][D]
  void* out;                // [total_rows][num_q_heads][D]
  int dtype;                // ActDtype of q / out
  int num_q_heads;
  int group;              // query heads per KV head
  float scale_log2;       // sm_scale * log2(e)
  int v_group;            // V per-token group size in channels (int formats)
  TileLayout tile;        // staged raw tile layout (padded rows for 16-bit formats)
  uint32_t mma_tile_off;  // offset of the dequantized fp16 K|V tile (quantized formats only)
  int q_tiles;            // query tiles per sequence (blockIdx.x = split * q_tiles + tile)
  int num_splits;         // KV splits (1: no split, the output is written directly)
  int tiles_per_split;    // KV tiles of kAttnTile keys per split
  int64_t partial_rows;   // total query rows x num_q_heads (rows of partial_o / partial_lse per split)
  float* partial_o;       // [num_splits][partial_rows][D], normalized (num_splits > 1)
  float* partial_lse;     // [num_splits][partial_rows], log2 domain
};

template <int D, Format FK, Format FV>
__global__ void __launch_bounds__(kExtendThreads) PagedExtendKernel(const __grid_constant__ ExtendKernelParams p) {
  static_assert(kIs16Bit<FK> == kIs16Bit<FV>, "16-bit and quantized formats are not mixed in one kernel");
  constexpr bool kDirect = kIs16Bit<FK>;     // ldmatrix straight from the staged tile
  constexpr bool kBf = FK == Format::kBf16;  // mma element type
  constexpr int kPitch = D * 2 + 16;         // bytes per padded fp16/bf16 row
  constexpr int kKSteps = D / 16, kNT = kAttnTile / 8, kONT = D / 8;
  constexpr int kRowK = D * FormatTraits<FK>::kBits / 8, kRowV = D * FormatTraits<FV>::kBits / 8;
  extern __shared__ __align__(16) uint8_t smem[];

  const int seq = blockIdx.z, h = blockIdx.y;
  const int len = p.seq_lens[seq];
  const int row0_q = p.q_indptr[seq];
  const int n = p.q_indptr[seq + 1] - row0_q;
  const int rows = n * p.group;
  const int split = blockIdx.x / p.q_tiles;
  const int tile_row0 = (blockIdx.x % p.q_tiles) * kExtendRows;
  if (tile_row0 >= rows) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int qh0 = (p.kv.first_head + h) * p.group;

  // This thread's two rows (g and g + 8 of the warp) and their causal limits.
  int row_tok[2], row_head[2], row_pos[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = tile_row0 + warp * 16 + g + 8 * i;
    row_tok[i] = r / p.group;
    row_head[i] = r % p.group;
    row_pos[i] = r < rows ? len - n + row_tok[i] : -1;  // padding rows see nothing
  }
  // Q fragments (A operand, row-major 16 x 16 per k-step).
  uint32_t qa[kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = j % 2, col = ks * 16 + 2 * t4 + (j / 2) * 8;
      float x = 0.0f, y = 0.0f;
      if (row_pos[i] >= 0) {
        const int64_t base = (int64_t(row0_q + row_tok[i]) * p.num_q_heads + qh0 + row_head[i]) * D + col;
        x = LoadActDevice(p.q, p.dtype, base);
        y = LoadActDevice(p.q, p.dtype, base + 1);
      }
      qa[ks][j] = PackPair<kBf>(x, y);
    }

  float o[kONT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < kONT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

  const int last_row = min(rows, tile_row0 + kExtendRows) - 1;
  const int max_pos = len - n + last_row / p.group;
  // This CTA's KV tiles: [tile_begin, tile_end) of the causal range [0, max_pos / kAttnTile].
  const int tile_begin = split * p.tiles_per_split;
  const int tile_end = p.num_splits > 1 ? min(max_pos / kAttnTile + 1, tile_begin + p.tiles_per_split)
                                        : max_pos / kAttnTile + 1;
  // Keys up to the smallest position of the warp's real rows need no causal mask (padding rows compute
  // on zero q and are never stored), so only the tiles crossing the diagonal pay for the comparisons.
  int my_min = INT_MAX;
#pragma unroll
  for (int i = 0; i < 2; ++i)
    if (row_pos[i] >= 0) my_min = min(my_min, row_pos[i]);
  const int warp_min_pos = __reduce_min_sync(0xffffffffu, my_min);
  // kExtendStages-deep cp.async pipeline with one barrier per tile: the barrier after tile t's copies
  // land also proves every warp is done with tile t - 1, whose stage the copy of tile t + 2 reuses.
  TileSlots next_slots = FetchTileSlots(p.kv, seq, len, min(tile_begin, max(tile_end - 1, 0)));
#pragma unroll
  for (int s0 = 0; s0 < kExtendStages - 1; ++s0) {
    if (tile_begin + s0 < tile_end) {
      LoadTile<kExtendThreads, kRowK, kRowV, kDirect>(p.kv, p.tile, next_slots, h, len, tile_begin + s0,
                                                      smem + s0 * p.tile.stage_bytes);
      next_slots = FetchTileSlots(p.kv, seq, len, min(tile_begin + s0 + 1, tile_end - 1));
    }
    CpAsyncCommit();
  }
  int stage_rd = 0, stage_wr = kExtendStages - 1;
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    CpAsyncWait<kExtendStages - 2>();
    __syncthreads();
    const int ahead = tile + kExtendStages - 1;
    if (ahead < tile_end) {
      LoadTile<kExtendThreads, kRowK, kRowV, kDirect>(p.kv, p.tile, next_slots, h, len, ahead,
                                                      smem + stage_wr * p.tile.stage_bytes);
      if (ahead + 1 < tile_end) next_slots = FetchTileSlots(p.kv, seq, len, ahead + 1);
    }
    CpAsyncCommit();
    uint8_t* st = smem + stage_rd * p.tile.stage_bytes;
    stage_rd = stage_rd + 1 == kExtendStages ? 0 : stage_rd + 1;
    stage_wr = stage_wr + 1 == kExtendStages ? 0 : stage_wr + 1;
    const bool need_mask = tile * kAttnTile + kAttnTile - 1 > warp_min_pos;
    const uint8_t* kt = st;
    const uint8_t* vt = st + p.tile.v_off;
    // Keys at or past len are masked out of S, but P = 0 times stale V could still be NaN: zero those rows.
    const int valid = len - tile * kAttnTile;
    if constexpr (kDirect) {
      if (valid < kAttnTile) {
        for (int i = threadIdx.x; i < (kAttnTile - valid) * (D / 8); i += kExtendThreads)
          *reinterpret_cast<uint4*>(st + p.tile.v_off + (valid + i / (D / 8)) * kPitch + (i % (D / 8)) * 16) =
              make_uint4(0, 0, 0, 0);
        __syncthreads();
      }
    } else {
      DequantTile<D, FK, FV, kExtendThreads>(p.tile, p.kv.block_size, p.v_group, st, valid, smem + p.mma_tile_off);
      __syncthreads();
      kt = smem + p.mma_tile_off;
      vt = kt + kAttnTile * kPitch;
    }
    // S = Q K^T for 16 rows x 64 keys per warp.
    float s[kNT][4];
#pragma unroll
    for (int j = 0; j < kNT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks)
#pragma unroll
      for (int jp = 0; jp < kNT / 2; ++jp) {
        uint32_t b[4];
        const int tok = jp * 16 + (lane / 16) * 8 + lane % 8, ch = ks * 16 + ((lane / 8) % 2) * 8;
        LdMatrixX4(b, kt + tok * kPitch + ch * 2);
        Mma16816<kBf>(s[2 * jp], qa[ks], b[0], b[1]);
        Mma16816<kBf>(s[2 * jp + 1], qa[ks], b[2], b[3]);
      }
      // Mask, online softmax (rows g: elements 0,1; rows g + 8: elements 2,3).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = m[i];
      if (need_mask) {
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = tile * kAttnTile + j * 8 + 2 * t4 + e;
            float& x = s[j][2 * i + e];
            x = key <= row_pos[i] ? x * p.scale_log2 : -INFINITY;
            mx = fmaxf(mx, x);
          }
      } else {
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[j][2 * i + e];
            x *= p.scale_log2;
            mx = fmaxf(mx, x);
          }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2f(m[i] - base);
      m[i] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) sum += (s[j][2 * i + e] = exp2f(s[j][2 * i + e] - base));
      l[i] = l[i] * alpha + sum;  // per-lane partial; reduced across the 4 lanes at the end
#pragma unroll
      for (int j = 0; j < kONT; ++j) {
        o[j][2 * i] *= alpha;
        o[j][2 * i + 1] *= alpha;
      }
    }
    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kAttnTile / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = PackPair<kBf>(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = PackPair<kBf>(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = PackPair<kBf>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = PackPair<kBf>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int cp = 0; cp < kONT / 2; ++cp) {
        uint32_t b[4];
        const int tok = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8, ch = cp * 16 + (lane / 16) * 8;
        LdMatrixX4T(b, vt + tok * kPitch + ch * 2);
        Mma16816<kBf>(o[2 * cp], pa, b[0], b[1]);
        Mma16816<kBf>(o[2 * cp + 1], pa, b[2], b[3]);
      }
    }
  }
  CpAsyncWait<0>();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    if (row_pos[i] < 0) continue;
    const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
    const int64_t prow = int64_t(row0_q + row_tok[i]) * p.num_q_heads + qh0 + row_head[i];
    const int64_t base = prow * D;
    if (p.num_splits > 1) {  // this split's share: normalized output and log2-sum-exp of the row
      float* po = p.partial_o + (int64_t(split) * p.partial_rows + prow) * D;
#pragma unroll
      for (int j = 0; j < kONT; ++j) {
        po[j * 8 + 2 * t4] = o[j][2 * i] * inv;
        po[j * 8 + 2 * t4 + 1] = o[j][2 * i + 1] * inv;
      }
      if (t4 == 0) p.partial_lse[int64_t(split) * p.partial_rows + prow] = l[i] > 0.0f ? m[i] + log2f(l[i]) : -INFINITY;
      continue;
    }
#pragma unroll
    for (int j = 0; j < kONT; ++j) {
      StoreActDevice(p.out, p.dtype, base + j * 8 + 2 * t4, o[j][2 * i] * inv);
      StoreActDevice(p.out, p.dtype, base + j * 8 + 2 * t4 + 1, o[j][2 * i + 1] * inv);
    }
  }
}

template <int D, Format FK, Format FV>
cudaError_t LaunchPagedExtend(const ExtendKernelParams& p, dim3 grid, cudaStream_t stream) {
  const size_t smem =
      kExtendStages * size_t(p.tile.stage_bytes) + (kIs16Bit<FK> ? 0 : 2 * size_t(kAttnTile) * (D * 2 + 16));
  auto* kernel = &PagedExtendKernel<D, FK, FV>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kExtendThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvtier::cuda_attn
