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
#define KVTIER_DECODE_SMEM_QUANT (72 * 1024)  // pipeline bytes per CTA, quantized pages (3 CTAs per SM)
#endif

#ifndef KVTIER_DECODE_QUANT_CTAS
#define KVTIER_DECODE_QUANT_CTAS 3  // register budget of the quantized kernels: CTAs per SM (D <= 128)
#endif

namespace kvtier::cuda_attn {

inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeWarps = kDecodeThreads / 32;
inline constexpr int kChunk = 16;  // tokens per chunk (one mma n-tile pair)
inline constexpr int kChunkTokens = kChunk;

// Layout of one warp stage (one chunk): [K rows][V rows][K params][V params]. Each parameter area holds the
// slice of the segment's group parameters the chunk uses, then (two-level formats: fp4_e2m1) the
// segment's own scale ("tail").
struct DecodeStage {
  uint32_t v_off = 0, kp_off = 0, vp_off = 0, bytes = 0;
  uint32_t kp_bytes = 0;         // K group-parameter bytes staged per chunk
  uint32_t kp_chunk_stride = 0;  // source offset per 16-token chunk inside the block (fp4 K: token groups)
  uint32_t kp_tail_src = 0, kp_tail = 0;  // segment scale: source offset in the record, bytes (0: none)
  uint32_t vp_bytes = 0;      // V group-parameter bytes staged per chunk
  uint32_t vp_tok_bytes = 0;  // source offset per token (per-token groupings; 0: per segment)
  uint32_t vp_tail_src = 0, vp_tail = 0;
};

// One operand's parameters as the decode kernel stages them.
struct DecodeParamSlice {
  uint32_t bytes = 0, chunk_stride = 0, tok_bytes = 0, tail_src = 0, tail = 0;
};

// group_bytes: the segment's group-parameter bytes (without the segment scale); tail: the segment scale's
// bytes. K per channel: whole-block groups are staged whole; 16-token groups (fp4) one token group per
// chunk. V per token: the chunk's tokens. Per segment (fp8): the record.
inline DecodeParamSlice KParamSlice(int head_dim, int block_size, uint32_t group_bytes, uint32_t tail,
                                    bool token_groups) {
  DecodeParamSlice s;
  s.tail = tail;
  s.tail_src = group_bytes;
  if (token_groups) {
    s.chunk_stride = group_bytes / static_cast<uint32_t>(block_size / kChunkTokens);
    s.bytes = s.chunk_stride;
  } else {
    s.bytes = group_bytes;
  }
  (void)head_dim;
  return s;
}
inline DecodeParamSlice VParamSlice(int block_size, uint32_t group_bytes, uint32_t tail, bool per_token) {
  DecodeParamSlice s;
  s.tail = tail;
  s.tail_src = group_bytes;
  s.tok_bytes = per_token ? group_bytes / static_cast<uint32_t>(block_size) : 0u;
  s.bytes = per_token ? s.tok_bytes * kChunkTokens : group_bytes;
  return s;
}

inline DecodeStage MakeDecodeStage(int head_dim, int k_bits, int v_bits, const DecodeParamSlice& k,
                                   const DecodeParamSlice& v) {
  auto align16 = [](uint32_t x) { return (x + 15u) / 16u * 16u; };
  const uint32_t pitch_k = static_cast<uint32_t>(head_dim * k_bits / 8 + 16);
  const uint32_t pitch_v = static_cast<uint32_t>(head_dim * v_bits / 8 + 16);
  DecodeStage s;
  s.v_off = pitch_k * kChunkTokens;
  s.kp_off = s.v_off + pitch_v * kChunkTokens;
  s.kp_bytes = k.bytes;
  s.kp_chunk_stride = k.chunk_stride;
  s.kp_tail_src = k.tail_src;
  s.kp_tail = k.tail;
  s.vp_bytes = v.bytes;
  s.vp_tok_bytes = v.tok_bytes;
  s.vp_tail_src = v.tail_src;
  s.vp_tail = v.tail;
  // Tails sit right after their slice (slices of two-level formats are multiples of 16 bytes).
  s.vp_off = align16(s.kp_off + s.kp_bytes + s.kp_tail);
  s.bytes = align16(s.vp_off + s.vp_bytes + s.vp_tail);
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
constexpr int DecodeChunkParamBytes(int head_dim, int k_bits, int v_bits, bool fp8, bool fp4) {
  if (fp4) return 2 * (head_dim + 16);
  const int k = fp8 ? 16 : k_bits == 8 ? 2 * head_dim : k_bits == 4 ? 4 * head_dim : 0;
  const int v = fp8 ? 16 : v_bits == 8 ? 2 * kChunk : v_bits == 4 ? 4 * kChunk * (head_dim / 32) : 0;
  return k + v;
}

// Stages per warp: as many as fit the CTA's pipeline budget, 2 to 8.
template <int D, Format FK, Format FV>
constexpr int DecodeStages() {
  constexpr int kb = FormatTraits<FK>::kBits, vb = FormatTraits<FV>::kBits;
  constexpr int stage = kChunk * (D * (kb + vb) / 8 + 32) + DecodeChunkParamBytes(D, kb, vb, kIsFp8<FK>, kIsFp4<FK>);
  constexpr int budget = kIs16Bit<FK> ? KVTIER_DECODE_SMEM_16BIT : KVTIER_DECODE_SMEM_QUANT;
  constexpr int n = budget / (kDecodeWarps * stage);
  return n < 2 ? 2 : n > 8 ? 8 : n;
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
  const int cib = tok / kChunk;  // chunk inside the block
  if (s.kp_bytes > 0) {
    const uint8_t* src = p.kv.KParams(slot, h) + cib * s.kp_chunk_stride;
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
  // Segment scales of two-level formats (4 bytes each).
  if (s.kp_tail > 0 && lane == 0) CpAsync4(st + s.kp_off + s.kp_bytes, p.kv.KParams(slot, h) + s.kp_tail_src);
  if (s.vp_tail > 0 && lane == 1) CpAsync4(st + s.vp_off + s.vp_bytes, p.kv.VParams(slot, h) + s.vp_tail_src);
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
  auto slot_of = [&](int i) { return p.kv.Slot(seq, chunk_of(i) >> p.chunks_log2); };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_mine)
      LoadChunk<kRowK, kRowV>(p, slot_of(s), (chunk_of(s) & cmask) * kChunk, h, wsm + s * p.stage.bytes, lane);
    CpAsyncCommit();
  }
  int32_t next_slot = kStages - 1 < n_mine ? slot_of(kStages - 1) : 0;
  int stage_rd = 0, stage_wr = kStages - 1;
  for (int i = 0; i < n_mine; ++i) {
    const int ahead = i + kStages - 1;
    if (ahead < n_mine) {
      LoadChunk<kRowK, kRowV>(p, next_slot, (chunk_of(ahead) & cmask) * kChunk, h, wsm + stage_wr * p.stage.bytes,
                              lane);
      if (ahead + 1 < n_mine) next_slot = slot_of(ahead + 1);  // the block-table latency hides behind the math
    }
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();
    __syncwarp();
    uint8_t* st = wsm + stage_rd * p.stage.bytes;
    stage_rd = stage_rd + 1 == kStages ? 0 : stage_rd + 1;
    stage_wr = stage_wr + 1 == kStages ? 0 : stage_wr + 1;
    const int valid = len - chunk_of(i) * kChunk;  // >= 1
    // Keys at or past len are masked out of S, but P = 0 times stale V could still be NaN: zero the codes
    // of those rows (quantized formats also zero those tokens' V scale factors below).
    if (valid < kChunk) {
      for (int x = lane; x < (kChunk - valid) * (kRowV / 16); x += 32)
        *reinterpret_cast<uint4*>(st + p.stage.v_off + (valid + x / (kRowV / 16)) * kPitchV + (x % (kRowV / 16)) * 16) =
            make_uint4(0, 0, 0, 0);
      __syncwarp();
    }
    const int tv[4] = {2 * t4, 2 * t4 + 1, 8 + 2 * t4, 9 + 2 * t4};
    float s[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    float k_scale = 1.0f, vf[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    const uint8_t* kp = st + p.stage.kp_off;
    const uint8_t* vp = st + p.stage.vp_off;
    if constexpr (kDirect) {
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        uint32_t b[4];
        LdMatrixX4(b, st + ((lane / 16) * 8 + lane % 8) * kPitchK + (ks * 16 + ((lane / 8) % 2) * 8) * 2);
        Mma16816<kBf>(s[0], qa[ks], b[0], b[1]);
        Mma16816<kBf>(s[1], qa[ks], b[2], b[3]);
      }
    } else {
      // K codes -> fp16 fragments; per-channel K scales (and int4 offsets) of the lane's 8 channels of a
      // pair of k-steps are read as one vector.
      if constexpr (kIsFp8<FK>) k_scale = *reinterpret_cast<const float*>(kp);
      // fp4: fragments hold e2m1 * s * 2^-14 (exact), so S carries the segment scale G * 2^14.
      if constexpr (kIsFp4<FK>) k_scale = *reinterpret_cast<const float*>(kp + p.stage.kp_bytes) * 16384.0f;
#pragma unroll
      for (int kpair = 0; kpair < D / 32; ++kpair) {
        KRaw8<FK> raw[2];
#pragma unroll
        for (int j = 0; j < 2; ++j)
          raw[j] = *reinterpret_cast<const KRaw8<FK>*>(st + (8 * j + g) * kPitchK +
                                                       (32 * kpair + 8 * t4) * FormatTraits<FK>::kBits / 8);
        // Channel params of channels 32 kpair + 8 t4 + 0..7: int8 one fp16 scale each (16 bytes), int4
        // (scale, offset) fp16 pairs (32 bytes).
        uint4 kpv[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
        if constexpr (FK == Format::kInt8) kpv[0] = *reinterpret_cast<const uint4*>(kp + 2 * (32 * kpair + 8 * t4));
        if constexpr (kIsFp4<FK>) {  // E4M3 scale bytes of the chunk's token group, channels 0..7
          const uint2 b = *reinterpret_cast<const uint2*>(kp + 32 * kpair + 8 * t4);
          kpv[0].x = b.x;
          kpv[0].y = b.y;
        }
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
            if constexpr (kIsFp4<FK>)  // bytes c0 (of kw[0]) and c1 = c0 + 4 (of kw[1])
              sc[x] = E4m3x2ToHalf2(Prmt(kw[0], kw[1], uint32_t(c0) | (uint32_t(c1) << 4)));
          }
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            uint32_t b0, b1;
            KCodes<FK>(raw[j], hh, b0, b1);
            if constexpr (FK == Format::kInt8 || kIsFp4<FK>) {
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
      for (int x = 0; x < 4; ++x) {
        float f = 1.0f;
        if constexpr (kIsFp8<FV>) f = *reinterpret_cast<const float*>(vp);
        if constexpr (FV == Format::kInt8)
          f = __half2float(__ushort_as_half(reinterpret_cast<const uint16_t*>(vp)[tv[x]]));
        if constexpr (kIsFp4<FV>) f = *reinterpret_cast<const float*>(vp + p.stage.vp_bytes) * 16384.0f;
        vf[x] = tv[x] < valid ? f : 0.0f;
      }
    }
    // Online softmax over the chunk's 16 keys (rows g: elements 0,1; rows g + 8: elements 2,3).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[j][2 * r + e];
          x = j * 8 + 2 * t4 + e < valid ? x * (k_scale * p.scale_log2) : -INFINITY;
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2f(m[r] - base);
      m[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) sum += (s[j][2 * r + e] = exp2f(s[j][2 * r + e] - base));
      l[r] = l[r] * alpha + sum;
      if (alpha != 1.0f) {  // the running max rarely moves once a few chunks are in
#pragma unroll
        for (int j = 0; j < kONT; ++j) {
          o[j][2 * r] *= alpha;
          o[j][2 * r + 1] *= alpha;
        }
      }
    }
    uint32_t pa[4];
    pa[0] = PackPair<kBf>(s[0][0] * vf[0], s[0][1] * vf[1]);
    pa[1] = PackPair<kBf>(s[0][2] * vf[0], s[0][3] * vf[1]);
    pa[2] = PackPair<kBf>(s[1][0] * vf[2], s[1][1] * vf[3]);
    pa[3] = PackPair<kBf>(s[1][2] * vf[2], s[1][3] * vf[3]);
    if constexpr (kDirect) {
#pragma unroll
      for (int cp = 0; cp < kONT / 2; ++cp) {
        uint32_t b[4];
        LdMatrixX4T(b, st + p.stage.v_off + (((lane / 8) % 2) * 8 + lane % 8) * kPitchV +
                           (cp * 16 + (lane / 16) * 8) * 2);
        Mma16816<kBf>(o[2 * cp], pa, b[0], b[1]);
        Mma16816<kBf>(o[2 * cp + 1], pa, b[2], b[3]);
      }
    } else {
      const uint8_t* vt = st + p.stage.v_off;
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
            const uint32_t m0 = tv[2 * x] < valid ? 0xffffffffu : 0u;
            const uint32_t m1 = tv[2 * x + 1] < valid ? 0xffffffffu : 0u;
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
        } else if constexpr (kIsFp4<FV>) {
          // As int4: nibble pair (k, k + 4) of x01 is (token a, token b) of channel 32 q + 4 g + k; the
          // E4M3 scale of the pair's 16-channel group per token, zero for tokens past the end.
          uint32_t w[4], sc[2];
#pragma unroll
          for (int x = 0; x < 4; ++x)
            w[x] = *reinterpret_cast<const uint16_t*>(vt + tv[x] * kPitchV + 16 * q + 2 * g);
          const int grp = 2 * q + g / 4;
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const uint32_t s0 = tv[2 * x] < valid ? vp[tv[2 * x] * (D / 16) + grp] : 0u;
            const uint32_t s1 = tv[2 * x + 1] < valid ? vp[tv[2 * x + 1] * (D / 16) + grp] : 0u;
            sc[x] = E4m3x2ToHalf2(s0 | (s1 << 8));
          }
          const uint32_t x01 = w[0] | (w[1] << 16), x23 = w[2] | (w[3] << 16);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const uint32_t b0 = HMul2(Fp4Nibbles4ToHalf2Scaled(x01, k), sc[0]);
            const uint32_t b1 = HMul2(Fp4Nibbles4ToHalf2Scaled(x23, k), sc[1]);
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
    __syncwarp();  // every lane is done with this stage before it is refilled
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
