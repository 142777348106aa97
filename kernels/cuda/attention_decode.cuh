// CUDA paged decode kernel (split-K flash-decoding over quantized pages, tensor cores), templated on
// head_dim and the K and V formats. Included only by the per-format-family .cu files (through
// attention_dispatch.h).
//
// One CTA = (split, KV head x 16-query-head chunk, sequence): the query heads of the GQA group are the 16
// rows of an mma.sync m16n8k16 A operand (padded when the group is smaller), so each KV byte is read once
// per group and QK^T / PV run on tensor cores with fp32 accumulation.
//
// Warps are independent streams: the CTA's split is cut into *chunks* of 16 tokens (one block, or a
// sixteenth-aligned part of a 32/64-token block) and warp w takes chunks w, w + 4, w + 8, ... through its
// own kStages-deep cp.async pipeline in its own slice of shared memory (chunk = K rows, V rows, the
// block's K parameters and the chunk's V parameters; rows padded by 16 bytes against bank conflicts).
// The main loop has no CTA-wide barrier: a warp waits only for its own copies (cp.async.wait_group +
// __syncwarp), so loads of one warp overlap the math of the others and nothing convoys. Block-table
// entries are read one chunk ahead.
//
// 16-bit pages feed the mma with ldmatrix; quantized codes are turned into fp16 fragments in registers
// (attention_mma.cuh: fp8 via cvt, int8/int4 via magic numbers and prmt transposes), with the cheap scale
// placement: fp8 K scales multiply S, int8 / fp8 V scales multiply P, per-channel int K scales and int4 V
// scale/offset are one fp16x2 FMA per pair. Each warp keeps its own online-softmax state (base 2); the
// warps' states are merged in shared memory at the end, and split partials by MergeSplitsKernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention/paged_kv.h"
#include "kernels/cuda/attention_convert.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/attention_tile.cuh"

#ifndef KVTIER_DECODE_SMEM_16BIT
#define KVTIER_DECODE_SMEM_16BIT (104 * 1024)  // pipeline bytes per CTA, 16-bit pages (2 CTAs per SM)
#endif
#ifndef KVTIER_DECODE_SMEM_QUANT
#define KVTIER_DECODE_SMEM_QUANT (75 * 1024)  // pipeline bytes per CTA, quantized pages (3 CTAs per SM)
#endif

#ifndef KVTIER_DECODE_PAIR
#define KVTIER_DECODE_PAIR 1  // quantized pages: two chunks per warp step when the pipeline allows it
#endif
#ifndef KVTIER_DECODE_QUANT_CTAS
#define KVTIER_DECODE_QUANT_CTAS 3  // register budget of the quantized kernels: CTAs per SM (D <= 128)
#endif

namespace kvtier::cuda_attn {

inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeWarps = kDecodeThreads / 32;
inline constexpr int kChunk = 16;  // tokens per warp step (one mma n-tile pair)

// Layout of one warp stage (one chunk): [K rows][V rows][K params of the block][V params of the chunk].
struct DecodeStage {
  uint32_t v_off = 0, kp_off = 0, vp_off = 0, bytes = 0;
  uint32_t kp_bytes = 0;      // K parameter bytes of the block (whole segment)
  uint32_t vp_bytes = 0;      // V parameter bytes staged per chunk
  uint32_t vp_tok_bytes = 0;  // V parameter bytes per token (per-token groupings; 0: per segment)
};

// k_param_bytes / v_param_bytes: the segments' parameter bytes; v_per_token: V parameters are per token.
inline DecodeStage MakeDecodeStage(int head_dim, int block_size, int k_bits, int v_bits, uint32_t k_param_bytes,
                                   uint32_t v_param_bytes, bool v_per_token) {
  auto align16 = [](uint32_t x) { return (x + 15u) / 16u * 16u; };
  const uint32_t pitch_k = static_cast<uint32_t>(head_dim * k_bits / 8 + 16);
  const uint32_t pitch_v = static_cast<uint32_t>(head_dim * v_bits / 8 + 16);
  DecodeStage s;
  s.v_off = pitch_k * kChunk;
  s.kp_off = s.v_off + pitch_v * kChunk;
  s.kp_bytes = k_param_bytes;
  s.vp_tok_bytes = v_per_token ? v_param_bytes / static_cast<uint32_t>(block_size) : 0u;
  s.vp_bytes = v_per_token ? s.vp_tok_bytes * kChunk : v_param_bytes;
  s.vp_off = align16(s.kp_off + s.kp_bytes);
  s.bytes = align16(s.vp_off + s.vp_bytes);
  return s;
}

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
  float scale_log2;     // sm_scale * log2(e)
  int v_group;          // V per-token group size in channels (int formats)
  int chunks_log2;      // log2(block_size / kChunk)
  DecodeStage stage;    // one warp stage
};

// Estimated parameter bytes of one chunk with the default codecs (steers the pipeline depth only; the
// host sizes shared memory from the real layout).
constexpr int DecodeChunkParamBytes(int head_dim, int k_bits, int v_bits, bool fp8) {
  const int k = fp8 ? 16 : k_bits == 8 ? 2 * head_dim : k_bits == 4 ? 4 * head_dim : 0;
  const int v = fp8 ? 16 : v_bits == 8 ? 2 * kChunk : v_bits == 4 ? 4 * kChunk * (head_dim / 32) : 0;
  return k + v;
}

// Stages per warp: as many as fit the CTA's pipeline budget, 2 to 8.
template <int D, Format FK, Format FV>
constexpr int DecodeStages() {
  constexpr int kb = FormatTraits<FK>::kBits, vb = FormatTraits<FV>::kBits;
  constexpr int stage = kChunk * (D * (kb + vb) / 8 + 32) + DecodeChunkParamBytes(D, kb, vb, kIsFp8<FK>);
  constexpr int budget = kIs16Bit<FK> ? KVTIER_DECODE_SMEM_16BIT : KVTIER_DECODE_SMEM_QUANT;
  constexpr int n = budget / (kDecodeWarps * stage);
  return n < 2 ? 2 : n > 8 ? 8 : n;
}

// Chunks a warp processes per step: quantized pages take two (one softmax update per 32 keys and two
// independent dequantize -> mma chains in flight) when their pipeline is at least 4 chunks deep; 16-bit
// pages keep their shared memory for depth.
template <int D, Format FK, Format FV>
constexpr int DecodePair() {
  return KVTIER_DECODE_PAIR && !kIs16Bit<FK> && DecodeStages<D, FK, FV>() >= 4 ? 2 : 1;
}

// Issues the copies of one chunk (16 tokens starting at token `tok` of the block in `slot`) of run head
// `h` into `st`. Called by all 32 lanes of a warp; the warp commits the group itself.
template <int kRowK, int kRowV>
__device__ __forceinline__ void LoadChunk(const DecodeKernelParams& p, int32_t slot, int tok, int h, uint8_t* st,
                                          int lane) {
  constexpr int kCK = kRowK / 16, kCV = kRowV / 16;  // 16-byte pieces per row
  constexpr int kPitchK = kRowK + 16, kPitchV = kRowV + 16;
  const uint8_t* ksrc = p.kv.KData(slot, h) + tok * kRowK;
  const uint8_t* vsrc = p.kv.VData(slot, h) + tok * kRowV;
#pragma unroll
  for (int i = lane; i < kChunk * kCK; i += 32) CpAsync16(st + (i / kCK) * kPitchK + (i % kCK) * 16, ksrc + i * 16);
#pragma unroll
  for (int i = lane; i < kChunk * kCV; i += 32)
    CpAsync16(st + p.stage.v_off + (i / kCV) * kPitchV + (i % kCV) * 16, vsrc + i * 16);
  const DecodeStage& s = p.stage;
  if (s.kp_bytes > 0) {
    const uint8_t* src = p.kv.KParams(slot, h);
    if (s.kp_bytes % 16 == 0) {
      for (uint32_t i = lane; i < s.kp_bytes / 16; i += 32) CpAsync16(st + s.kp_off + 16 * i, src + 16 * i);
    } else {
      for (uint32_t i = lane; i < s.kp_bytes / 4; i += 32) CpAsync4(st + s.kp_off + 4 * i, src + 4 * i);
    }
  }
  if (s.vp_bytes > 0) {
    const uint8_t* src = p.kv.VParams(slot, h) + tok * s.vp_tok_bytes;
    if (s.vp_bytes % 16 == 0) {
      for (uint32_t i = lane; i < s.vp_bytes / 16; i += 32) CpAsync16(st + s.vp_off + 16 * i, src + 16 * i);
    } else {
      for (uint32_t i = lane; i < s.vp_bytes / 4; i += 32) CpAsync4(st + s.vp_off + 4 * i, src + 4 * i);
    }
  }
}

template <int D, Format FK, Format FV>
__global__ void __launch_bounds__(kDecodeThreads, D > 128 ? 1 : kIs16Bit<FK> ? 2 : KVTIER_DECODE_QUANT_CTAS)
    PagedDecodeKernel(const __grid_constant__ DecodeKernelParams p) {
  static_assert(kIs16Bit<FK> == kIs16Bit<FV>, "16-bit and quantized formats are not mixed in one kernel");
  constexpr bool kDirect = kIs16Bit<FK>;
  constexpr bool kBf = FK == Format::kBf16;
  constexpr int kKSteps = D / 16, kONT = D / 8;
  constexpr int kRowK = D * FormatTraits<FK>::kBits / 8, kRowV = D * FormatTraits<FV>::kBits / 8;
  constexpr int kPitchK = kRowK + 16, kPitchV = kRowV + 16;  // padded staged rows
  constexpr int kStages = DecodeStages<D, FK, FV>();
  constexpr int kPair = DecodePair<D, FK, FV>();  // chunks per step
  static_assert(kStages > kPair, "the pipeline needs a stage in flight");
  constexpr int kWarps = kDecodeWarps;
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
  const int num_chunks = (len + kChunk - 1) / kChunk;
  const int c_begin = tile_begin * (kAttnTile / kChunk) + warp;
  const int c_end = min(num_chunks, tile_end * (kAttnTile / kChunk));
  const int n_mine = c_begin < c_end ? (c_end - c_begin + kWarps - 1) / kWarps : 0;  // this warp's chunks
  const int qh0 = (p.kv.first_head + h) * p.group + g0;  // query head of row 0
  const int ng = min(16, p.group - g0);
  const int cmask = (1 << p.chunks_log2) - 1;

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
  // int4 V: parameter group of this lane's 4 channels 32 q + 4 g .. +3 (v_group is a multiple of 8).
  int vgrp[D / 32];
  const int v_groups = D / p.v_group;
#pragma unroll
  for (int q = 0; q < D / 32; ++q) vgrp[q] = FV == Format::kInt4 ? (32 * q + 4 * g) / p.v_group : 0;

  uint8_t* wsm = smem + warp * kStages * p.stage.bytes;
  auto chunk_of = [&](int i) { return c_begin + i * kWarps; };
  auto slot_of = [&](int i) { return i < n_mine ? p.kv.Slot(seq, chunk_of(i) >> p.chunks_log2) : 0; };
  auto stage_of = [&](int i) { return wsm + (i % kStages) * p.stage.bytes; };
  auto issue = [&](int i, int32_t slot) {
    if (i < n_mine) LoadChunk<kRowK, kRowV>(p, slot, (chunk_of(i) & cmask) * kChunk, h, stage_of(i), lane);
    CpAsyncCommit();
  };
  // Pipeline: chunk i is one commit group in stage i % kStages. A step consumes kPair chunks; before it,
  // chunks up to i + kStages - 1 are issued into the stages the previous step freed.
#pragma unroll
  for (int i = 0; i < kStages - kPair; ++i) issue(i, slot_of(i));
  int32_t next_slot[kPair];
#pragma unroll
  for (int u = 0; u < kPair; ++u) next_slot[u] = slot_of(kStages - kPair + u);
  for (int i = 0; i < n_mine; i += kPair) {
#pragma unroll
    for (int u = 0; u < kPair; ++u) {
      const int ahead = i + kStages - kPair + u;
      issue(ahead, next_slot[u]);
      next_slot[u] = slot_of(ahead + kPair);  // used next step: the block-table latency hides behind the math
    }
    CpAsyncWait<kStages - kPair>();
    __syncwarp();
    uint8_t* st[kPair];
    int valid[kPair];  // keys of chunk u inside the sequence (0: no chunk u in this step)
#pragma unroll
    for (int u = 0; u < kPair; ++u) {
      st[u] = stage_of(i + u);
      valid[u] = i + u < n_mine ? min(kChunk, len - chunk_of(i + u) * kChunk) : 0;
      // Keys at or past len are masked out of S, but P = 0 times stale V could still be NaN: zero the
      // codes of those rows (quantized formats also zero those tokens' V scale factors below).
      if (valid[u] > 0 && valid[u] < kChunk) {
        for (int x = lane; x < (kChunk - valid[u]) * (kRowV / 16); x += 32)
          *reinterpret_cast<uint4*>(st[u] + p.stage.v_off + (valid[u] + x / (kRowV / 16)) * kPitchV +
                                    (x % (kRowV / 16)) * 16) = make_uint4(0, 0, 0, 0);
      }
    }
    __syncwarp();
    const int tv[4] = {2 * t4, 2 * t4 + 1, 8 + 2 * t4, 9 + 2 * t4};
    float s[kPair][2][4], k_scale[kPair], vf[kPair][4];
#pragma unroll
    for (int u = 0; u < kPair; ++u) {
      k_scale[u] = 1.0f;
#pragma unroll
      for (int x = 0; x < 4; ++x) vf[u][x] = 1.0f;
      // Two accumulators per n-tile (even / odd k-steps) halve the dependent mma chain.
      float acc[2][2][4] = {};
      if (valid[u] == 0) {
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[u][j][e] = 0.0f;
        continue;
      }
      const uint8_t* kp = st[u] + p.stage.kp_off;
      const uint8_t* vp = st[u] + p.stage.vp_off;
      if constexpr (kDirect) {
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
          uint32_t b[4];
          LdMatrixX4(b, st[u] + ((lane / 16) * 8 + lane % 8) * kPitchK + (ks * 16 + ((lane / 8) % 2) * 8) * 2);
          Mma16816<kBf>(acc[0][ks % 2], qa[ks], b[0], b[1]);
          Mma16816<kBf>(acc[1][ks % 2], qa[ks], b[2], b[3]);
        }
      } else {
        // K codes -> fp16 fragments; per-channel K scales (and int4 offsets) of the lane's 8 channels of a
        // pair of k-steps are read as one vector.
        if constexpr (kIsFp8<FK>) k_scale[u] = *reinterpret_cast<const float*>(kp);
#pragma unroll
        for (int kpair = 0; kpair < D / 32; ++kpair) {
          KRaw8<FK> raw[2];
#pragma unroll
          for (int j = 0; j < 2; ++j)
            raw[j] = *reinterpret_cast<const KRaw8<FK>*>(st[u] + (8 * j + g) * kPitchK +
                                                         (32 * kpair + 8 * t4) * FormatTraits<FK>::kBits / 8);
          // Channel params of channels 32 kpair + 8 t4 + 0..7: int8 one fp16 scale each (16 bytes), int4
          // (scale, offset) fp16 pairs (32 bytes).
          uint4 kpv[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
          if constexpr (FK == Format::kInt8) kpv[0] = *reinterpret_cast<const uint4*>(kp + 2 * (32 * kpair + 8 * t4));
          if constexpr (FK == Format::kInt4) {
            kpv[0] = *reinterpret_cast<const uint4*>(kp + 4 * (32 * kpair + 8 * t4));
            kpv[1] = *reinterpret_cast<const uint4*>(kp + 4 * (32 * kpair + 8 * t4) + 16);
          }
          const uint32_t kw[8] = {kpv[0].x, kpv[0].y, kpv[0].z, kpv[0].w, kpv[1].x, kpv[1].y, kpv[1].z, kpv[1].w};
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int ks = 2 * kpair + hh;
            uint32_t sc[2] = {0, 0}, off[2] = {0, 0};
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              // Channels (relative to 32 kpair + 8 t4) of fragment elements 2x and 2x + 1.
              const int c0 = KChannel<FK>(ks, t4, 2 * x) - 32 * kpair - 8 * t4;
              [[maybe_unused]] const int c1 = KChannel<FK>(ks, t4, 2 * x + 1) - 32 * kpair - 8 * t4;
              if constexpr (FK == Format::kInt8) sc[x] = kw[c0 / 2];  // c1 == c0 + 1, c0 even: one word
              if constexpr (FK == Format::kInt4) {
                sc[x] = Prmt(kw[c0], kw[c1], 0x5410u);
                off[x] = Prmt(kw[c0], kw[c1], 0x7632u);
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
              Mma16816<false>(acc[j][hh], qa[ks], b0, b1);
            }
          }
        }
        // Per-token V factors folded into P (zero for tokens past the end, whose parameters are stale).
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          float f = 1.0f;
          if constexpr (kIsFp8<FV>) f = *reinterpret_cast<const float*>(vp);
          if constexpr (FV == Format::kInt8)
            f = __half2float(__ushort_as_half(reinterpret_cast<const uint16_t*>(vp)[tv[x]]));
          vf[u][x] = tv[x] < valid[u] ? f : 0.0f;
        }
      }
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[u][j][e] = acc[j][0][e] + acc[j][1][e];
    }
    // Online softmax over the step's kPair x 16 keys (rows g: elements 0,1; rows g + 8: elements 2,3).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int u = 0; u < kPair; ++u)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[u][j][2 * r + e];
            x = j * 8 + 2 * t4 + e < valid[u] ? x * (k_scale[u] * p.scale_log2) : -INFINITY;
            mx = fmaxf(mx, x);
          }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2f(m[r] - base);
      m[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int u = 0; u < kPair; ++u)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) sum += (s[u][j][2 * r + e] = exp2f(s[u][j][2 * r + e] - base));
      l[r] = l[r] * alpha + sum;
      if (alpha != 1.0f) {  // the running max rarely moves once a few chunks are in
#pragma unroll
        for (int j = 0; j < kONT; ++j) {
          o[j][2 * r] *= alpha;
          o[j][2 * r + 1] *= alpha;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kPair; ++u) {
      if (valid[u] == 0) continue;
      const uint8_t* vp = st[u] + p.stage.vp_off;
      uint32_t pa[4];
      pa[0] = PackPair<kBf>(s[u][0][0] * vf[u][0], s[u][0][1] * vf[u][1]);
      pa[1] = PackPair<kBf>(s[u][0][2] * vf[u][0], s[u][0][3] * vf[u][1]);
      pa[2] = PackPair<kBf>(s[u][1][0] * vf[u][2], s[u][1][1] * vf[u][3]);
      pa[3] = PackPair<kBf>(s[u][1][2] * vf[u][2], s[u][1][3] * vf[u][3]);
      if constexpr (kDirect) {
#pragma unroll
        for (int cp = 0; cp < kONT / 2; ++cp) {
          uint32_t b[4];
          LdMatrixX4T(b, st[u] + p.stage.v_off + (((lane / 8) % 2) * 8 + lane % 8) * kPitchV +
                             (cp * 16 + (lane / 16) * 8) * 2);
          Mma16816<kBf>(o[2 * cp], pa, b[0], b[1]);
          Mma16816<kBf>(o[2 * cp + 1], pa, b[2], b[3]);
        }
      } else {
        const uint8_t* vt = st[u] + p.stage.v_off;
#pragma unroll
        for (int q = 0; q < D / 32; ++q) {
          if constexpr (FV == Format::kInt4) {
            // Two tokens' 4 nibbles in one word: nibble pair (k, k + 4) is (token a, token b) of channel k.
            uint32_t w[4], sc[2], off[2];
#pragma unroll
            for (int x = 0; x < 4; ++x)
              w[x] = *reinterpret_cast<const uint16_t*>(vt + tv[x] * kPitchV + 16 * q + 2 * g);
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              const uint32_t pa0 = reinterpret_cast<const uint32_t*>(vp)[tv[2 * x] * v_groups + vgrp[q]];
              const uint32_t pa1 = reinterpret_cast<const uint32_t*>(vp)[tv[2 * x + 1] * v_groups + vgrp[q]];
              const uint32_t m0 = tv[2 * x] < valid[u] ? 0xffffffffu : 0u;
              const uint32_t m1 = tv[2 * x + 1] < valid[u] ? 0xffffffffu : 0u;
              sc[x] = Prmt(pa0 & m0, pa1 & m1, 0x5410u);
              off[x] = Prmt(pa0 & m0, pa1 & m1, 0x7632u);
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
            for (int x = 0; x < 4; ++x)
              w[x] = *reinterpret_cast<const uint32_t*>(vt + tv[x] * kPitchV + 32 * q + 4 * g);
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
    __syncwarp();  // every lane is done with these stages before they are refilled
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

// Dynamic shared memory of a decode CTA: the warps' pipelines, or the final merge of the warps' states,
// whichever is larger.
template <int D, Format FK, Format FV>
size_t DecodeSmemBytes(const DecodeStage& s) {
  const size_t merge = sizeof(float) * kDecodeWarps * 16 * (D + 2);
  const size_t pipeline = size_t(s.bytes) * kDecodeWarps * DecodeStages<D, FK, FV>();
  return merge > pipeline ? merge : pipeline;
}

// Resident CTAs per SM of this decode kernel with the stage layout `s`.
template <int D, Format FK, Format FV>
cudaError_t OccupancyPagedDecode(const DecodeStage& s, int* ctas) {
  const size_t smem = DecodeSmemBytes<D, FK, FV>(s);
  auto* kernel = &PagedDecodeKernel<D, FK, FV>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas, kernel, kDecodeThreads, smem);
}

template <int D, Format FK, Format FV>
cudaError_t LaunchPagedDecode(const DecodeKernelParams& p, dim3 grid, cudaStream_t stream) {
  const size_t smem = DecodeSmemBytes<D, FK, FV>(p.stage);
  auto* kernel = &PagedDecodeKernel<D, FK, FV>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kDecodeThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvtier::cuda_attn
