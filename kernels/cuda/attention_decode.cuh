// CUDA paged decode kernel (split-K flash-decoding over quantized pages), templated on head_dim, the K
// and V formats and the number of query heads served per CTA. Included only by the per-format-family
// .cu files that instantiate it (attention_decode_*.cu) and by nothing else.
//
// One CTA = (split, KV head [x query-head chunk], sequence); it serves up to kG query heads of the GQA
// group, so each KV byte is read once per group. The CTA walks its split's tiles of kTile tokens
// (whole blocks); a kStages-deep cp.async pipeline stages each tile's raw K/V codes and their block
// parameters into shared memory (16-byte copies, several tiles in flight). 128 threads form kRows rows
// of kBdx lanes; lane tx owns channels [8 tx, 8 tx + 8) and row ty owns kTile / kRows consecutive
// tokens of the tile (all inside one block, so block parameters are loaded once per tile). Scores are
// reduced across a row with xor shuffles, softmax is online (fp32, base 2, one rescale per kU tokens),
// and the rows' states are combined in shared memory at the end. Dequantization is folded: fp8
// per-segment K scales multiply the score, V scales the softmax weight (int8 per-token, fp8), and only
// per-channel K and offset-carrying int4 V are applied per element.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention/paged_kv.h"
#include "kernels/cuda/attention_convert.cuh"
#include "kernels/cuda/attention_tile.cuh"

namespace kvtier::cuda_attn {

inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeTile = kAttnTile;

// Everything the decode kernel reads. Built by the host dispatcher (attention_cuda.cu).
struct DecodeKernelParams {
  PagedKvView kv;           // one head run of one layer; device block table
  const int32_t* seq_lens;  // device [num_seqs]
  const void* q;            // [num_seqs][num_q_heads][D]
  void* out;                // [num_seqs][num_q_heads][D] (written when num_splits == 1)
  float* partial_o;         // [num_splits][num_seqs][num_q_heads][D] (num_splits > 1)
  float* partial_lse;       // [num_splits][num_seqs][num_q_heads], log2 domain
  int dtype;                // ActDtype of q / out
  int num_seqs;
  int num_q_heads;
  int group;     // query heads per KV head
  int g_chunks;  // ceil(group / kG): grid.y = run heads * g_chunks
  int num_splits;
  float scale_log2;  // sm_scale * log2(e)
  int v_group;       // V per-token group size in channels (int formats)
  TileLayout tile;   // staged tile layout (unpadded rows)
};

__device__ __forceinline__ float HalfBitsToFloat(uint16_t b) { return __half2float(__ushort_as_half(b)); }

// Pipeline depth: 3 stages, 2 when a stage exceeds 48 KiB (fp16 head_dim 256).
template <int D, Format FK, Format FV>
constexpr int DecodeStages() {
  return (D * (FormatTraits<FK>::kBits + FormatTraits<FV>::kBits) / 8 * kDecodeTile > 48 * 1024) ? 2 : 3;
}

template <int D, Format FK, Format FV, int kG>
__global__ void __launch_bounds__(kDecodeThreads) PagedDecodeKernel(const __grid_constant__ DecodeKernelParams p) {
  constexpr int kChunks = D / 8;
  constexpr int kBdx = kChunks <= 8 ? 8 : kChunks <= 16 ? 16 : 32;
  constexpr int kRows = kDecodeThreads / kBdx;
  constexpr int kTpr = kDecodeTile / kRows;  // tokens per row per tile
  constexpr int kU = (kTpr < 32 / kG) ? kTpr : 32 / kG;
  constexpr int kKBits = FormatTraits<FK>::kBits, kVBits = FormatTraits<FV>::kBits;
  constexpr int kStages = DecodeStages<D, FK, FV>();
  using KRaw = typename CodeChunk<FK>::Raw;
  using VRaw = typename CodeChunk<FV>::Raw;

  extern __shared__ __align__(16) uint8_t smem[];
  const int split = blockIdx.x;
  const int h = blockIdx.y / p.g_chunks;
  const int g0 = (blockIdx.y % p.g_chunks) * kG;
  const int seq = blockIdx.z;
  const int tx = threadIdx.x % kBdx, ty = threadIdx.x / kBdx;
  const bool has_chunk = tx < kChunks;
  const int len = p.seq_lens[seq];
  const int num_tiles = (len + kDecodeTile - 1) / kDecodeTile;
  const int per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
  const int tile_begin = min(num_tiles, split * per_split), tile_end = min(num_tiles, tile_begin + per_split);
  const int qh0 = (p.kv.first_head + h) * p.group + g0;  // first query head served
  const int ng = min(kG, p.group - g0);

  float q[kG][8], o[kG][8], m[kG], l[kG];
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      o[g][i] = 0.0f;
      q[g][i] =
          (g < ng && has_chunk)
              ? LoadActDevice(p.q, p.dtype, (int64_t(seq) * p.num_q_heads + qh0 + g) * D + tx * 8 + i) * p.scale_log2
              : 0.0f;
    }
  }

  for (int s = 0; s < kStages - 1; ++s) {
    if (tile_begin + s < tile_end)
      LoadTile<kDecodeThreads>(p.kv, p.tile, seq, h, len, tile_begin + s, smem + s * p.tile.stage_bytes);
    CpAsyncCommit();
  }
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int ahead = tile + kStages - 1;
    if (ahead < tile_end)
      LoadTile<kDecodeThreads>(p.kv, p.tile, seq, h, len, ahead,
                               smem + ((ahead - tile_begin) % kStages) * p.tile.stage_bytes);
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();
    __syncthreads();
    const uint8_t* st = smem + ((tile - tile_begin) % kStages) * p.tile.stage_bytes;
    const int t_row = ty * kTpr;             // first tile-local token of this row
    const int jb = t_row / p.kv.block_size;  // block of the tile holding the row's tokens
    const uint8_t* kp = st + p.tile.kp_off + jb * p.tile.k_seg_param_bytes;
    const uint8_t* vp = st + p.tile.vp_off + jb * p.tile.v_seg_param_bytes;
    // Per-tile K parameters: fp8 segment scale (applied to scores) or per-channel scale/offset.
    float k_seg_scale = 1.0f, k_sc[8], k_off[8];
    if constexpr (FK == Format::kFp8E4m3 || FK == Format::kFp8E5m2) k_seg_scale = *reinterpret_cast<const float*>(kp);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      k_sc[i] = 1.0f;
      k_off[i] = 0.0f;
      if constexpr (FK == Format::kInt8) {
        if (has_chunk) k_sc[i] = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(kp)[tx * 8 + i]);
      } else if constexpr (FK == Format::kInt4) {
        if (has_chunk) {
          k_sc[i] = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(kp)[2 * (tx * 8 + i)]);
          k_off[i] = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(kp)[2 * (tx * 8 + i) + 1]);
        }
      }
    }
    float v_seg_scale = 1.0f;
    if constexpr (FV == Format::kFp8E4m3 || FV == Format::kFp8E5m2) v_seg_scale = *reinterpret_cast<const float*>(vp);
    const int v_groups = D / p.v_group, v_grp = tx * 8 / p.v_group;

#pragma unroll
    for (int u0 = 0; u0 < kTpr; u0 += kU) {
      float sc[kU][kG];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int t = t_row + u0 + u;
        float k[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (has_chunk) {
          DecodeCodes<FK>(*reinterpret_cast<const KRaw*>(st + t * (D * kKBits / 8) + tx * kKBits), k);
          if constexpr (FK == Format::kInt8 || FK == Format::kInt4) {
#pragma unroll
            for (int i = 0; i < 8; ++i) k[i] = fmaf(k[i], k_sc[i], k_off[i]);
          }
        }
#pragma unroll
        for (int g = 0; g < kG; ++g) {
          float acc = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; ++i) acc = fmaf(q[g][i], k[i], acc);
          sc[u][g] = acc;
        }
      }
#pragma unroll
      for (int off = kBdx / 2; off >= 1; off /= 2)
#pragma unroll
        for (int u = 0; u < kU; ++u)
#pragma unroll
          for (int g = 0; g < kG; ++g) sc[u][g] += __shfl_xor_sync(0xffffffffu, sc[u][g], off);
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        float mx = m[g];
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const bool valid = tile * kDecodeTile + t_row + u0 + u < len;
          sc[u][g] = valid ? sc[u][g] * k_seg_scale : -INFINITY;
          mx = fmaxf(mx, sc[u][g]);
        }
        const float base = mx == -INFINITY ? 0.0f : mx;
        const float alpha = exp2f(m[g] - base);
        m[g] = mx;
        l[g] *= alpha;
#pragma unroll
        for (int i = 0; i < 8; ++i) o[g][i] *= alpha;
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          sc[u][g] = exp2f(sc[u][g] - base);
          l[g] += sc[u][g];
        }
      }
      if (has_chunk) {
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int t = t_row + u0 + u;
          if (tile * kDecodeTile + t >= len) break;
          float v[8];
          DecodeCodes<FV>(*reinterpret_cast<const VRaw*>(st + p.tile.v_off + t * (D * kVBits / 8) + tx * kVBits), v);
          float wscale = v_seg_scale;
          const int tb = t % p.kv.block_size;  // token within its block
          if constexpr (FV == Format::kInt8) {
            wscale = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(vp)[tb * v_groups + v_grp]);
          } else if constexpr (FV == Format::kInt4) {
            const float s = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(vp)[2 * (tb * v_groups + v_grp)]);
            const float z = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(vp)[2 * (tb * v_groups + v_grp) + 1]);
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = fmaf(v[i], s, z);
          }
#pragma unroll
          for (int g = 0; g < kG; ++g) {
            const float w = sc[u][g] * wscale;
#pragma unroll
            for (int i = 0; i < 8; ++i) o[g][i] = fmaf(w, v[i], o[g][i]);
          }
        }
      }
    }
    __syncthreads();
  }
  CpAsyncWait<0>();
  __syncthreads();

  // Combine the rows' states: smem [kRows][kG] (m, l) and [kRows][kG][D] o.
  float* sm_m = reinterpret_cast<float*>(smem);
  float* sm_l = sm_m + kRows * kG;
  float* sm_o = sm_l + kRows * kG;
  if (tx == 0) {
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      sm_m[ty * kG + g] = m[g];
      sm_l[ty * kG + g] = l[g];
    }
  }
  if (has_chunk) {
#pragma unroll
    for (int g = 0; g < kG; ++g)
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_o[(ty * kG + g) * D + tx * 8 + i] = o[g][i];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < ng * D; idx += kDecodeThreads) {
    const int g = idx / D, c = idx % D;
    float mx = -INFINITY;
    for (int r = 0; r < kRows; ++r) mx = fmaxf(mx, sm_m[r * kG + g]);
    const float base = mx == -INFINITY ? 0.0f : mx;
    float lsum = 0.0f, acc = 0.0f;
    for (int r = 0; r < kRows; ++r) {
      const float w = exp2f(sm_m[r * kG + g] - base);
      lsum += sm_l[r * kG + g] * w;
      acc += sm_o[(r * kG + g) * D + c] * w;
    }
    const int64_t row = int64_t(seq) * p.num_q_heads + qh0 + g;
    const float val = lsum > 0.0f ? acc / lsum : 0.0f;
    if (p.num_splits == 1) {
      StoreActDevice(p.out, p.dtype, row * D + c, val);
    } else {
      const int64_t prow = int64_t(split) * p.num_seqs * p.num_q_heads + row;
      p.partial_o[prow * D + c] = val;
      if (c == 0) p.partial_lse[prow] = lsum > 0.0f ? mx + log2f(lsum) : -INFINITY;
    }
  }
}

// Launches one decode grid; the dynamic shared memory is the pipeline or the final combine, the larger.
template <int D, Format FK, Format FV, int kG>
cudaError_t LaunchPagedDecode(const DecodeKernelParams& p, dim3 grid, cudaStream_t stream) {
  constexpr int kChunks = D / 8;
  constexpr int kBdx = kChunks <= 8 ? 8 : kChunks <= 16 ? 16 : 32;
  constexpr int kRows = kDecodeThreads / kBdx;
  const size_t combine = sizeof(float) * kRows * kG * (D + 2);
  const size_t pipeline = size_t(p.tile.stage_bytes) * DecodeStages<D, FK, FV>();
  const size_t smem = combine > pipeline ? combine : pipeline;
  auto* kernel = &PagedDecodeKernel<D, FK, FV, kG>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kDecodeThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvtier::cuda_attn
