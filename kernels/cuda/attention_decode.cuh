// CUDA paged decode kernel (split-K flash-decoding over quantized pages, tensor cores), templated on
// head_dim and the K and V formats. Included only by the per-format-family .cu files (through
// attention_dispatch.h).
//
// One CTA = (split, KV head x 16-query-head chunk, sequence): the query heads of the GQA group are the 16
// rows of an mma.sync m16n8k16 A operand (padded when the group is smaller), so each KV byte is read once
// per group and QK^T / PV run on tensor cores with fp32 accumulation. The CTA walks its split's tiles of
// kAttnTile tokens (whole blocks); a kStages-deep cp.async pipeline (LoadTile, 16-byte copies, no
// per-chunk divisions) stages each tile's K/V codes and block parameters in shared memory (rows padded
// by 16 bytes against bank conflicts). 16-bit pages feed the mma with ldmatrix; quantized codes are
// turned into fp16 fragments in registers (attention_mma.cuh: fp8 via cvt, int8/int4 via magic numbers
// and prmt transposes), with the cheap scale placement: fp8 K scales multiply S, int8 / fp8 V scales
// multiply P, per-channel int K scales and int4 V scale/offset are one fp16x2 FMA per pair. Each of the
// 4 warps owns 16 tokens of the tile (one block) and keeps its own online-softmax state (base 2); the
// warps' states are merged in shared memory at the end, and split partials by MergeSplitsKernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention/paged_kv.h"
#include "kernels/cuda/attention_convert.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/attention_tile.cuh"

namespace kvtier::cuda_attn {

inline constexpr int kDecodeThreads = 128;

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
  int g_chunks;  // ceil(group / 16): grid.y = run heads * g_chunks
  int num_splits;
  float scale_log2;  // sm_scale * log2(e)
  int v_group;       // V per-token group size in channels (int formats)
  TileLayout tile;   // staged tile layout (rows padded by 16 bytes)
};

template <int D, Format FK, Format FV>
constexpr int DecodeStages() {
  constexpr int kb = FormatTraits<FK>::kBits, vb = FormatTraits<FV>::kBits;
  return DecodeStagesFor(D, kb, vb, DecodeTileParamBytes(D, kb, vb, kIsFp8<FK>));
}

template <int D, Format FK, Format FV>
__global__ void __launch_bounds__(kDecodeThreads, D <= 128 ? 3 : 1)
    PagedDecodeKernel(const __grid_constant__ DecodeKernelParams p) {
  static_assert(kIs16Bit<FK> == kIs16Bit<FV>, "16-bit and quantized formats are not mixed in one kernel");
  constexpr bool kDirect = kIs16Bit<FK>;
  constexpr bool kBf = FK == Format::kBf16;
  constexpr int kKSteps = D / 16, kONT = D / 8;
  constexpr int kRowK = D * FormatTraits<FK>::kBits / 8, kRowV = D * FormatTraits<FV>::kBits / 8;
  constexpr int kPitchK = kRowK + 16, kPitchV = kRowV + 16;  // padded staged rows (see attention_tile.cuh)
  constexpr int kStages = DecodeStages<D, FK, FV>();
  constexpr int kWarps = kDecodeThreads / 32;
  extern __shared__ __align__(16) uint8_t smem[];

  const int split = blockIdx.x;
  const int h = blockIdx.y / p.g_chunks;
  const int g0 = (blockIdx.y % p.g_chunks) * 16;
  const int seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int len = p.seq_lens[seq];
  const int num_tiles = (len + kAttnTile - 1) / kAttnTile;
  const int per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
  const int tile_begin = min(num_tiles, split * per_split), tile_end = min(num_tiles, tile_begin + per_split);
  const int qh0 = (p.kv.first_head + h) * p.group + g0;  // query head of row 0
  const int ng = min(16, p.group - g0);

  // Q as the A operand: row r = query head qh0 + r (rows >= ng are zero), columns in KChannel order.
  uint32_t qa[kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = g + 8 * (j % 2), e = 2 * (j / 2);
      float x = 0.0f, y = 0.0f;
      if (r < ng) {
        const int64_t base = (int64_t(seq) * p.num_q_heads + qh0 + r) * D;
        x = LoadActDevice(p.q, p.dtype, base + KChannel<FK>(ks, t4, e));
        y = LoadActDevice(p.q, p.dtype, base + KChannel<FK>(ks, t4, e + 1));
      }
      qa[ks][j] = PackPair<kBf>(x, y);
    }
  float o[kONT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < kONT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

  for (int s = 0; s < kStages - 1; ++s) {
    if (tile_begin + s < tile_end)
      LoadTile<kDecodeThreads, kRowK, kRowV, true>(p.kv, p.tile, FetchTileSlots(p.kv, seq, len, tile_begin + s), h, len,
                                                   tile_begin + s, smem + s * p.tile.stage_bytes);
    CpAsyncCommit();
  }
  TileSlots next_slots = FetchTileSlots(p.kv, seq, len, min(tile_begin + kStages - 1, num_tiles - 1));
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int ahead = tile + kStages - 1;
    if (ahead < tile_end) {
      LoadTile<kDecodeThreads, kRowK, kRowV, true>(p.kv, p.tile, next_slots, h, len, ahead,
                                                   smem + ((ahead - tile_begin) % kStages) * p.tile.stage_bytes);
      if (ahead + 1 < tile_end) next_slots = FetchTileSlots(p.kv, seq, len, ahead + 1);
    }
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();
    __syncthreads();
    uint8_t* st = smem + ((tile - tile_begin) % kStages) * p.tile.stage_bytes;
    // Keys at or past len are masked out of S, but P = 0 times stale V could still be NaN: zero the codes
    // of those rows (quantized formats also zero those tokens' V scale factors below).
    const int valid = len - tile * kAttnTile;
    if (valid < kAttnTile) {
      for (int i = threadIdx.x; i < (kAttnTile - valid) * (kRowV / 16); i += kDecodeThreads)
        *reinterpret_cast<uint4*>(st + p.tile.v_off + (valid + i / (kRowV / 16)) * kPitchV + (i % (kRowV / 16)) * 16) =
            make_uint4(0, 0, 0, 0);
      __syncthreads();
    }
    const int tok0 = warp * 16;  // this warp's 16 keys of the tile (all inside one block)
    if (tok0 < valid) {
      float s[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
      float k_scale = 1.0f, vf[4] = {1.0f, 1.0f, 1.0f, 1.0f};
      const int tv[4] = {tok0 + 2 * t4, tok0 + 2 * t4 + 1, tok0 + 8 + 2 * t4, tok0 + 9 + 2 * t4};
      const int bs = p.kv.block_size, jb = tok0 / bs;
      const uint8_t* kp = st + p.tile.kp_off + jb * p.tile.k_seg_param_bytes;
      const uint8_t* vp = st + p.tile.vp_off + jb * p.tile.v_seg_param_bytes;
      if constexpr (kDirect) {
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
          uint32_t b[4];
          LdMatrixX4(b, st + (tok0 + (lane / 16) * 8 + lane % 8) * kPitchK + (ks * 16 + ((lane / 8) % 2) * 8) * 2);
          Mma16816<kBf>(s[0], qa[ks], b[0], b[1]);
          Mma16816<kBf>(s[1], qa[ks], b[2], b[3]);
        }
      } else {
        // K codes -> fp16 fragments; per-channel K scale (and int4 offset) pairs in KChannel order are
        // read per pair of k-steps for this warp's block (kept out of registers across the tile).
        if constexpr (kIsFp8<FK>) k_scale = *reinterpret_cast<const float*>(kp);
        const uint16_t* kp16 = reinterpret_cast<const uint16_t*>(kp);
#pragma unroll
        for (int kpair = 0; kpair < D / 32; ++kpair) {
          KRaw8<FK> raw[2];
#pragma unroll
          for (int j = 0; j < 2; ++j)
            raw[j] = *reinterpret_cast<const KRaw8<FK>*>(st + (tok0 + 8 * j + g) * kPitchK +
                                                         (32 * kpair + 8 * t4) * FormatTraits<FK>::kBits / 8);
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int ks = 2 * kpair + hh;
            uint32_t sc[2] = {0, 0}, off[2] = {0, 0};
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              const int c0 = KChannel<FK>(ks, t4, 2 * x), c1 = KChannel<FK>(ks, t4, 2 * x + 1);
              if constexpr (FK == Format::kInt8) sc[x] = uint32_t(kp16[c0]) | (uint32_t(kp16[c1]) << 16);
              if constexpr (FK == Format::kInt4) {
                sc[x] = uint32_t(kp16[2 * c0]) | (uint32_t(kp16[2 * c1]) << 16);
                off[x] = uint32_t(kp16[2 * c0 + 1]) | (uint32_t(kp16[2 * c1 + 1]) << 16);
              }
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              uint32_t b0, b1;
              KCodes<FK>(raw[j], hh, b0, b1);
              if constexpr (FK == Format::kInt8) {
                b0 = HMul2(b0, sc[0]);
                b1 = HMul2(b1, sc[1]);
              } else if constexpr (FK == Format::kInt4) {
                b0 = HFma2(b0, sc[0], off[0]);
                b1 = HFma2(b1, sc[1], off[1]);
              }
              Mma16816<false>(s[j], qa[ks], b0, b1);
            }
          }
        }
        // Per-token V factors folded into P (zero for tokens past the end, whose parameters are stale).
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float f = 1.0f;
          if constexpr (kIsFp8<FV>) f = *reinterpret_cast<const float*>(vp);
          if constexpr (FV == Format::kInt8)
            f = __half2float(__ushort_as_half(reinterpret_cast<const uint16_t*>(vp)[(tv[i] % bs) * (D / p.v_group)]));
          vf[i] = tv[i] < valid ? f : 0.0f;
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = m[i];
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[j][2 * i + e];
            x = tok0 + j * 8 + 2 * t4 + e < valid ? x * (k_scale * p.scale_log2) : -INFINITY;
            mx = fmaxf(mx, x);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float base = mx == -INFINITY ? 0.0f : mx;
        const float alpha = exp2f(m[i] - base);
        m[i] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) sum += (s[j][2 * i + e] = exp2f(s[j][2 * i + e] - base));
        l[i] = l[i] * alpha + sum;
        if (alpha != 1.0f) {  // the running max rarely moves once a few tiles are in
#pragma unroll
          for (int j = 0; j < kONT; ++j) {
            o[j][2 * i] *= alpha;
            o[j][2 * i + 1] *= alpha;
          }
        }
      }
      constexpr bool kPBf = kBf;
      uint32_t pa[4];
      pa[0] = PackPair<kPBf>(s[0][0] * vf[0], s[0][1] * vf[1]);
      pa[1] = PackPair<kPBf>(s[0][2] * vf[0], s[0][3] * vf[1]);
      pa[2] = PackPair<kPBf>(s[1][0] * vf[2], s[1][1] * vf[3]);
      pa[3] = PackPair<kPBf>(s[1][2] * vf[2], s[1][3] * vf[3]);
      if constexpr (kDirect) {
#pragma unroll
        for (int cp = 0; cp < kONT / 2; ++cp) {
          uint32_t b[4];
          LdMatrixX4T(b, st + p.tile.v_off + (tok0 + ((lane / 8) % 2) * 8 + lane % 8) * kPitchV +
                             (cp * 16 + (lane / 16) * 8) * 2);
          Mma16816<kBf>(o[2 * cp], pa, b[0], b[1]);
          Mma16816<kBf>(o[2 * cp + 1], pa, b[2], b[3]);
        }
      } else {
        const uint8_t* vt = st + p.tile.v_off;
#pragma unroll
        for (int q = 0; q < D / 32; ++q) {
          if constexpr (FV == Format::kInt4) {
            // Two tokens' 4 nibbles in one word: nibble pair (k, k + 4) is (token a, token b) of channel k.
            uint32_t w[4], sc[2], off[2];
#pragma unroll
            for (int i = 0; i < 4; ++i)
              w[i] = *reinterpret_cast<const uint16_t*>(vt + tv[i] * kPitchV + 16 * q + 2 * g);
            const int grp = (32 * q + 4 * g) / p.v_group;
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              const uint16_t* pa0 =
                  reinterpret_cast<const uint16_t*>(vp) + 2 * ((tv[2 * x] % bs) * (D / p.v_group) + grp);
              const uint16_t* pa1 =
                  reinterpret_cast<const uint16_t*>(vp) + 2 * ((tv[2 * x + 1] % bs) * (D / p.v_group) + grp);
              const bool ok0 = tv[2 * x] < valid, ok1 = tv[2 * x + 1] < valid;
              sc[x] = (ok0 ? uint32_t(pa0[0]) : 0u) | ((ok1 ? uint32_t(pa1[0]) : 0u) << 16);
              off[x] = (ok0 ? uint32_t(pa0[1]) : 0u) | ((ok1 ? uint32_t(pa1[1]) : 0u) << 16);
            }
            const uint32_t x01 = w[0] | (w[1] << 16), x23 = w[2] | (w[3] << 16);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              const uint32_t b0 = HFma2(Nibbles4ToHalf2(x01, k), sc[0], off[0]);
              const uint32_t b1 = HFma2(Nibbles4ToHalf2(x23, k), sc[1], off[1]);
              Mma16816<false>(o[4 * q + k], pa, b0, b1);
            }
          } else {
            // 4 tokens x 4 channels of bytes, transposed into (token pair) per channel with prmt.
            uint32_t w[4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
              w[i] = *reinterpret_cast<const uint32_t*>(vt + tv[i] * kPitchV + 32 * q + 4 * g);
            const uint32_t xa = Prmt(w[0], w[1], 0x5140u), xb = Prmt(w[0], w[1], 0x7362u);
            const uint32_t ya = Prmt(w[2], w[3], 0x5140u), yb = Prmt(w[2], w[3], 0x7362u);
            Mma16816<false>(o[4 * q + 0], pa, Codes8ToHalf2<FV, false>(xa), Codes8ToHalf2<FV, false>(ya));
            Mma16816<false>(o[4 * q + 1], pa, Codes8ToHalf2<FV, true>(xa), Codes8ToHalf2<FV, true>(ya));
            Mma16816<false>(o[4 * q + 2], pa, Codes8ToHalf2<FV, false>(xb), Codes8ToHalf2<FV, false>(yb));
            Mma16816<false>(o[4 * q + 3], pa, Codes8ToHalf2<FV, true>(xb), Codes8ToHalf2<FV, true>(yb));
          }
        }
      }
    }
    __syncthreads();
  }
  CpAsyncWait<0>();
  __syncthreads();

  // Merge the warps' states: smem m, l [kWarps][16] and o [kWarps][16][D].
  float* sm_m = reinterpret_cast<float*>(smem);
  float* sm_l = sm_m + kWarps * 16;
  float* sm_o = sm_l + kWarps * 16;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int r = g + 8 * i;
    if (t4 == 0) {
      sm_m[warp * 16 + r] = m[i];
      sm_l[warp * 16 + r] = l[i];
    }
#pragma unroll
    for (int j = 0; j < kONT; ++j) {
      sm_o[(warp * 16 + r) * D + VChannel<FV>(j, 2 * t4)] = o[j][2 * i];
      sm_o[(warp * 16 + r) * D + VChannel<FV>(j, 2 * t4 + 1)] = o[j][2 * i + 1];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < ng * D; idx += kDecodeThreads) {
    const int r = idx / D, c = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w * 16 + r]);
    const float base = mx == -INFINITY ? 0.0f : mx;
    float lsum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = exp2f(sm_m[w * 16 + r] - base);
      lsum += sm_l[w * 16 + r] * wt;
      acc += sm_o[(w * 16 + r) * D + c] * wt;
    }
    const int64_t row = int64_t(seq) * p.num_q_heads + qh0 + r;
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

// Dynamic shared memory of a decode CTA: the pipeline stages plus the dequantized tile, or the final
// merge of the warps' states, whichever is larger.
template <int D, Format FK, Format FV>
size_t DecodeSmemBytes(const DecodeKernelParams& p) {
  const size_t merge = sizeof(float) * (kDecodeThreads / 32) * 16 * (D + 2);
  const size_t pipeline = size_t(p.tile.stage_bytes) * DecodeStages<D, FK, FV>();
  return merge > pipeline ? merge : pipeline;
}

// Resident CTAs per SM of this decode kernel with `smem` bytes of dynamic shared memory.
template <int D, Format FK, Format FV>
cudaError_t OccupancyPagedDecode(size_t smem, int* ctas) {
  auto* kernel = &PagedDecodeKernel<D, FK, FV>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas, kernel, kDecodeThreads, smem);
}

template <int D, Format FK, Format FV>
cudaError_t LaunchPagedDecode(const DecodeKernelParams& p, dim3 grid, cudaStream_t stream) {
  const size_t smem = DecodeSmemBytes<D, FK, FV>(p);
  auto* kernel = &PagedDecodeKernel<D, FK, FV>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kDecodeThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvtier::cuda_attn
