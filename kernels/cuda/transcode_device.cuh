// Device code of the CUDA transcode (internal to kernels/cuda/): one warp per (page, segment), in three
// phases. See kernels/cuda/transcode_cuda.h for the contract; everything format-specific comes from
// FormatTraits (kernels/format.h) and the two-level wrappers of kernels/segment.h, so the bytes are the
// CPU reference's.
//
// Lane layout: a segment is tokens x channels values, seen as vectors of 8 consecutive channels of one
// token (16 bytes of fp16, 8 of an 8-bit format, 4 of a 4-bit one). R = channels / 8 vectors make a token
// row; the warp covers rps = floor(32 / R) rows per step with A = rps * R active lanes (32 for head_dim
// 64/128/256; 24 for head_dim 96, whose lanes 24..31 only take part in shuffles: head_dim 96 runs on the
// generic kernel only, so that the page-out/page-in kernels compile with A = 32 folded in). Vector n of active
// lane l is v = n * A + l: token n * rps + l / R, channels c0 = (l % R) * 8 .. c0 + 7 (constant per lane).
// A lane holds up to kVecs vectors at once (raw words in registers, all loads in flight together); larger
// segments are processed in chunks and re-read (from L2) by phase 3.
//
//   phase 1 (destination quantized): per-group statistics. Symmetric formats need only the absolute
//           maximum (one fmaxf per value), int4 min and max. NaN is ignored by fmaxf/fminf; +-Inf would
//           enter, so a warp that sees an infinite statistic recomputes the segment's statistics with
//           the exact finite-only rule (GroupStats::Add). Per-channel statistics are reduced across the
//           lanes holding the same channels (shuffles), per-token groups across the group's lanes; one
//           lane per group writes them to the warp's shared-memory slice.
//   phase 2: one lane per GROUP derives its parameters (two-level formats first reduce the segment
//           scale), stores the parameter record (consecutive lanes, consecutive groups: coalesced) and
//           leaves 1/scale and the offset in shared memory. Parameters are thus computed once per group,
//           32 groups at a time, not once per lane that holds a value of the group.
//   phase 3: decode (source parameters cached per token group), encode with the shared-memory
//           parameters, store.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/transcode_kernel.h"
#include "kernels/format.h"
#include "kernels/segment.h"

namespace kvtier::cuda_transcode {

constexpr int kVecs = 8;  // vectors a lane holds at once
constexpr unsigned kFullMask = 0xffffffffu;

constexpr unsigned Bit(Format f) { return 1u << static_cast<int>(f); }
constexpr unsigned kAllFormats = (1u << kNumFormats) - 1;
constexpr unsigned kPassThroughFormats = Bit(Format::kFp16) | Bit(Format::kBf16);

constexpr Format FirstFormat(unsigned set) {
  for (int f = 0; f < kNumFormats; ++f)
    if (set & (1u << f)) return static_cast<Format>(f);
  return Format::kFp16;
}

// The device-side point where a runtime format becomes a template parameter. A one-format set compiles
// to a direct call; otherwise a warp-uniform switch over the set (the host guarantees membership).
template <unsigned kSet, class Fn>
__device__ __forceinline__ void With(uint8_t f, Fn&& fn) {
  if constexpr ((kSet & (kSet - 1)) == 0) {
    fn(FormatTag<FirstFormat(kSet)>{});
  } else {
    switch (static_cast<Format>(f)) {
#define KVTIER_CASE(F)                                                       \
  case F:                                                                    \
    if constexpr ((kSet & Bit(F)) != 0 && F != FirstFormat(kSet)) return fn(FormatTag<F>{}); \
    break;
      KVTIER_CASE(Format::kFp16)
      KVTIER_CASE(Format::kBf16)
      KVTIER_CASE(Format::kFp8E4m3)
      KVTIER_CASE(Format::kFp8E5m2)
      KVTIER_CASE(Format::kInt8)
      KVTIER_CASE(Format::kInt4)
      KVTIER_CASE(Format::kFp4E2m1)
#undef KVTIER_CASE
      default:
        break;
    }
    fn(FormatTag<FirstFormat(kSet)>{});
  }
}

template <Format F>
inline constexpr bool kSymmetric = F != Format::kInt4;  // parameters depend on the absolute maximum only

// Pseudo source format of the generic (quantized -> quantized) path: the segment already decoded into
// fp32 values in the warp's shared memory (Warp::vals), so that the path needs 7 decoders + 7 encoders
// instead of 7 x 7 transcoders. Never a FormatTraits argument (every use is special-cased first).
inline constexpr Format kSmemF32 = static_cast<Format>(kNumFormats);

struct Warp {
  const uint8_t* __restrict__ src;
  const uint8_t* __restrict__ src_params;
  uint8_t* __restrict__ dst;
  uint8_t* __restrict__ dst_params;
  float* sm_a;  // this warp's shared memory: stats lo / then 1/scale, per destination group
  float* sm_b;  // stats hi / then offset
  float* vals;  // generic path: the decoded segment, [tokens * channels] fp32
  SegmentPlan seg;
  int lane;
  int R;          // vectors per token row
  int rps;        // token rows per step of n (32 / R rounded down)
  int active;     // lanes that own vectors: rps * R
  bool on;        // this lane owns vectors (lane < active)
  int lane_row;   // l / R (0 for idle lanes, so that their index arithmetic stays in bounds)
  bool group_first;  // per-token destination: first lane of its group
  int c0;         // first channel of this lane's vectors
  int per_lane;   // vectors per lane in the segment
  int tokens, channels;
  // Group geometry without divisions (every group size is a power of two on the GPU path), per side:
  //   per-channel: token group of vector n = n >> tg_shift (vectors of one token group are consecutive
  //                in n: 32 / R tokens per step, and 32 / R divides the group's tokens);
  //   per-token:   group of vector n = g_base + n * g_step.
  int src_tg_shift, src_g_base, src_g_step;
  int dst_tg_shift, dst_g_base, dst_g_step;
  __device__ int Token(int n) const { return n * rps + lane_row; }
  __device__ int Vector(int n) const { return n * active + lane; }
};

// ---- raw vectors -------------------------------------------------------------------------------------

template <Format F>
__device__ __forceinline__ void LoadRaw(const uint8_t* data, int v, uint32_t (&w)[4]) {
  if constexpr (F == kSmemF32) return;  // DecodeVec reads shared memory
  else if constexpr (FormatTraits<F>::kBits == 16) {
    const uint4 x = __ldg(reinterpret_cast<const uint4*>(data + v * 16));
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
  } else if constexpr (FormatTraits<F>::kBits == 8) {
    const uint2 x = __ldg(reinterpret_cast<const uint2*>(data + v * 8));
    w[0] = x.x, w[1] = x.y;
  } else {
    w[0] = __ldg(reinterpret_cast<const uint32_t*>(data + v * 4));
  }
}

template <Format F>
__device__ __forceinline__ uint32_t CodeAt(const uint32_t (&w)[4], int j) {
  constexpr int kBits = FormatTraits<F>::kBits;
  if constexpr (kBits == 16) return (w[j / 2] >> (16 * (j & 1))) & 0xffffu;
  if constexpr (kBits == 8) return (w[j / 4] >> (8 * (j & 3))) & 0xffu;
  return (w[0] >> (4 * j)) & 0xfu;
}

template <Format F>
__device__ __forceinline__ void StoreCodes(uint8_t* data, int v, const uint32_t (&c)[8]) {
  constexpr int kBits = FormatTraits<F>::kBits;
  if constexpr (kBits == 16) {
    *reinterpret_cast<uint4*>(data + v * 16) =
        make_uint4(c[0] | (c[1] << 16), c[2] | (c[3] << 16), c[4] | (c[5] << 16), c[6] | (c[7] << 16));
  } else if constexpr (kBits == 8) {
    *reinterpret_cast<uint2*>(data + v * 8) =
        make_uint2(c[0] | (c[1] << 8) | (c[2] << 16) | (c[3] << 24), c[4] | (c[5] << 8) | (c[6] << 16) | (c[7] << 24));
  } else {
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) w |= c[j] << (4 * j);
    *reinterpret_cast<uint32_t*>(data + v * 4) = w;
  }
}

// ---- source parameters (decode) ----------------------------------------------------------------------

// Decode parameters of the 8 values of a vector: scale and offset per value.
struct VecParams {
  float scale[8];
  float offset[8];
};

// One group's record at p, read with one aligned access (the traits' memcpy would be byte accesses).
template <Format F>
__device__ __forceinline__ QParams LoadOne(const uint8_t* p, float seg_scale) {
  using T = FormatTraits<F>;
  uint32_t word = 0;
  if constexpr (T::kParamBytes == 1) word = __ldg(p);
  if constexpr (T::kParamBytes == 2) word = __ldg(reinterpret_cast<const uint16_t*>(p));
  if constexpr (T::kParamBytes == 4) word = __ldg(reinterpret_cast<const uint32_t*>(p));
  return LoadGroupParams<F>(reinterpret_cast<const uint8_t*>(&word), seg_scale);
}

// The 8 consecutive groups at p (8 * kParamBytes bytes, aligned to that size: c0 is a multiple of 8).
template <Format F>
__device__ __forceinline__ void LoadEight(const uint8_t* p, float seg_scale, VecParams& vp) {
  using T = FormatTraits<F>;
  uint32_t w[8];
  if constexpr (T::kParamBytes == 1) {
    const uint2 x = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = x.x, w[1] = x.y;
  } else if constexpr (T::kParamBytes == 2) {
    const uint4 x = __ldg(reinterpret_cast<const uint4*>(p));
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
  } else if constexpr (T::kParamBytes == 4) {
    const uint4 x = __ldg(reinterpret_cast<const uint4*>(p));
    const uint4 y = __ldg(reinterpret_cast<const uint4*>(p + 16));
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w, w[4] = y.x, w[5] = y.y, w[6] = y.z, w[7] = y.w;
  }
  if constexpr (T::kParamBytes > 0) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const QParams q =
          LoadGroupParams<F>(reinterpret_cast<const uint8_t*>(w) + j * T::kParamBytes, seg_scale);
      vp.scale[j] = q.scale;
      vp.offset[j] = q.offset;
    }
  }
}

// Source-side state: the segment scale and, for per-channel groups, the current token group's params.
template <Format F>
struct SrcState {
  float seg_scale = 0.0f;
  int cached_tg = -1;
  VecParams pc;
};

// fp4 sources decode through Fp4E2m1::DecodeWordToHalf2Scaled: code -> fp16 holding value * 2^-14
// (exact), times S * 2^14 (exact while no overflow) = value * S with the same single rounding as
// Decode(code) * S. Taken when the segment scale keeps every S * 2^14 finite (G < 1e30), else the
// traits' decode.
template <Format F>
__device__ __forceinline__ bool Fp4HalfPath(const SrcState<F>& s) {
  if constexpr (F == Format::kFp4E2m1) return s.seg_scale < 1e30f;
  else return false;
}

template <Format F>
__device__ __forceinline__ void ScaleForHalfPath(const SrcState<F>& s, VecParams& vp) {
  if (Fp4HalfPath<F>(s)) {
#pragma unroll
    for (int j = 0; j < 8; ++j) vp.scale[j] *= 16384.0f;
  }
}

template <Format F>
__device__ __forceinline__ void InitSrc(const Warp& w, SrcState<F>& s) {
  if constexpr (F == kSmemF32) {
    return;
  } else if constexpr (FormatTraits<F>::kParamBytes > 0) {
    const SegmentCodec c{F, static_cast<Grouping>(w.seg.src_grouping), w.seg.src_group};
    s.seg_scale = kTwoLevel<F> ? LoadSegmentScale<F>(c, SegmentDims{w.tokens, w.channels}, w.src_params) : 0.0f;
    if (c.grouping == Grouping::kPerSegment) {
      const QParams q = LoadOne<F>(w.src_params, s.seg_scale);
#pragma unroll
      for (int j = 0; j < 8; ++j) s.pc.scale[j] = q.scale, s.pc.offset[j] = q.offset;
      ScaleForHalfPath<F>(s, s.pc);
    }
  }
}

// Decodes vector n (raw words w) into x.
template <Format F>
__device__ __forceinline__ void DecodeVec(const Warp& w, int n, const uint32_t (&raw)[4], SrcState<F>& s,
                                          float (&x)[8]) {
  if constexpr (F == kSmemF32) {
    const float4* v = reinterpret_cast<const float4*>(w.vals + (w.on ? w.Vector(n) : 0) * 8);
    const float4 a = v[0], b = v[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
  } else if constexpr (F == Format::kFp16) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&raw[k]));
      x[2 * k] = f.x, x[2 * k + 1] = f.y;
    }
  } else if constexpr (F == Format::kBf16) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw[k]));
      x[2 * k] = f.x, x[2 * k + 1] = f.y;
    }
  } else {
    using T = FormatTraits<F>;
    const auto grouping = static_cast<Grouping>(w.seg.src_grouping);
    if (grouping == Grouping::kPerChannel) {
      const int tg = n >> w.src_tg_shift;  // warp-uniform
      if (tg != s.cached_tg) {
        LoadEight<F>(w.src_params + (tg * w.channels + w.c0) * T::kParamBytes, s.seg_scale, s.pc);
        ScaleForHalfPath<F>(s, s.pc);
        s.cached_tg = tg;
      }
    } else if (grouping == Grouping::kPerToken) {
      const int g = w.src_g_base + n * w.src_g_step;
      const QParams q = LoadOne<F>(w.src_params + g * T::kParamBytes, s.seg_scale);
#pragma unroll
      for (int j = 0; j < 8; ++j) s.pc.scale[j] = q.scale, s.pc.offset[j] = q.offset;
      ScaleForHalfPath<F>(s, s.pc);
    }
    if constexpr (F == Format::kFp4E2m1) {
      if (Fp4HalfPath<F>(s)) {
        uint32_t h2[4];
        Fp4E2m1::DecodeWordToHalf2Scaled(raw[0], h2);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h2[k]));
          x[2 * k] = f.x * s.pc.scale[2 * k], x[2 * k + 1] = f.y * s.pc.scale[2 * k + 1];
        }
        return;
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      QParams q;
      q.scale = s.pc.scale[j];
      q.offset = s.pc.offset[j];
      x[j] = T::Decode(CodeAt<F>(raw, j), q);
    }
  }
}

// ---- statistics (phase 1) ----------------------------------------------------------------------------

// lo/hi of the values seen; symmetric destinations track only hi = max |x| (from 0).
template <Format D>
struct Acc {
  float lo = __builtin_inff();
  float hi = kSymmetric<D> ? 0.0f : -__builtin_inff();
  template <bool kExact>
  __device__ __forceinline__ void Add(float x) {
    if constexpr (kSymmetric<D>) {
      const float a = fabsf(x);
      if constexpr (kExact) hi = a <= 3.402823466e38f ? fmaxf(hi, a) : hi;
      else hi = fmaxf(hi, a);  // NaN ignored; Inf enters (detected afterwards)
    } else {
      if constexpr (kExact) {
        if (fabsf(x) <= 3.402823466e38f) lo = fminf(lo, x), hi = fmaxf(hi, x);
      } else {
        lo = fminf(lo, x), hi = fmaxf(hi, x);
      }
    }
  }
  __device__ __forceinline__ void Merge(const Acc& o) {
    hi = fmaxf(hi, o.hi);
    if constexpr (!kSymmetric<D>) lo = fminf(lo, o.lo);
  }
  __device__ __forceinline__ void ShuffleMerge(int mask) {
    Acc o;
    o.hi = __shfl_xor_sync(kFullMask, hi, mask);
    if constexpr (!kSymmetric<D>) o.lo = __shfl_xor_sync(kFullMask, lo, mask);
    Merge(o);
  }
  __device__ __forceinline__ void MergeFrom(int src_lane, const Acc& mine) {  // mine: the value shuffled
    Acc o;
    o.hi = __shfl_sync(kFullMask, mine.hi, src_lane);
    if constexpr (!kSymmetric<D>) o.lo = __shfl_sync(kFullMask, mine.lo, src_lane);
    Merge(o);
  }
  __device__ __forceinline__ bool Infinite() const {
    return hi == __builtin_inff() || (!kSymmetric<D> && lo == -__builtin_inff());
  }
  // The group's statistics as MakeParams sees them (symmetric formats use only AbsMax = hi).
  __device__ __forceinline__ GroupStats Stats() const {
    GroupStats s;
    if constexpr (kSymmetric<D>) s.lo = -hi, s.hi = hi;
    else s.lo = lo, s.hi = hi;
    return s;
  }
};

template <Format D>
__device__ __forceinline__ void WriteStats(const Warp& w, int g, const Acc<D>& a) {
  w.sm_b[g] = a.hi;
  if constexpr (!kSymmetric<D>) w.sm_a[g] = a.lo;
}

// Statistics of every destination group into shared memory; returns whether any was infinite (then the
// caller runs it again with kExact). `raw` holds chunk 0 afterwards when the segment fits in one chunk.
template <Format S, Format D, bool kExact>
__device__ __forceinline__ bool Phase1(const Warp& w, SrcState<S>& ss, uint32_t (&raw)[kVecs][4]) {
  const auto grouping = static_cast<Grouping>(w.seg.dst_grouping);
  bool inf = false;
  Acc<D> ch[8];  // per-channel / per-segment accumulators
  // Per-channel: token group of vector n is n * (32 / R) / tpg (warp-uniform: 32 / R divides tpg).
  const int tg_mask = (1 << w.dst_tg_shift) - 1;  // per-channel: vectors of a token group, minus 1
  const int group_lanes = w.seg.dst_group / 8;       // per-token
  for (int base = 0; base < w.per_lane; base += kVecs) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i)
      if (base + i < w.per_lane && w.on) LoadRaw<S>(w.src, w.Vector(base + i), raw[i]);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int n = base + i;
      if (n >= w.per_lane) break;
      float x[8];
      DecodeVec<S>(w, n, raw[i], ss, x);
      if (grouping == Grouping::kPerToken) {
        Acc<D> a;
#pragma unroll
        for (int j = 0; j < 8; ++j) a.template Add<kExact>(x[j]);
        if ((group_lanes & (group_lanes - 1)) == 0) {  // aligned power-of-two blocks of lanes
          for (int m = 1; m < group_lanes; m <<= 1) a.ShuffleMerge(m);
        } else {  // head_dim 96, groups of 48 or 96 channels: the first lane gathers the others
          const Acc<D> mine = a;
          for (int k = 1; k < group_lanes; ++k) a.MergeFrom(w.lane + k < 32 ? w.lane + k : w.lane, mine);
        }
        if (w.on && w.group_first) {
          inf |= a.Infinite();
          WriteStats<D>(w, w.dst_g_base + n * w.dst_g_step, a);
        }
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) ch[j].template Add<kExact>(x[j]);
        if (grouping == Grouping::kPerChannel && ((n + 1) & tg_mask) == 0) {  // token group complete
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            // All-reduce over the rps lanes holding these channels (l, l + R, ...): rotation by k * R
            // within the active lanes (rps is 1, 2 or 4); idle lanes merge with themselves.
            for (int k = 1; k < w.rps; k <<= 1) {
              int src = w.lane + k * w.R;
              src = src >= w.active ? src - w.active : src;
              ch[j].MergeFrom(w.on ? src : w.lane, ch[j]);
            }
            inf |= w.on && ch[j].Infinite();
          }
          if (w.lane < w.R) {
            const int g0 = (n >> w.dst_tg_shift) * w.channels + w.c0;
#pragma unroll
            for (int j = 0; j < 8; ++j) WriteStats<D>(w, g0 + j, ch[j]);
          }
#pragma unroll
          for (int j = 0; j < 8; ++j) ch[j] = Acc<D>{};
        }
      }
    }
  }
  if (grouping == Grouping::kPerSegment) {
#pragma unroll
    for (int j = 1; j < 8; ++j) ch[0].Merge(ch[j]);
    if (!w.on) ch[0] = Acc<D>{};  // idle lanes hold no values
    for (int m = 1; m < 32; m <<= 1) ch[0].ShuffleMerge(m);
    inf |= ch[0].Infinite();
    if (w.lane == 0) WriteStats<D>(w, 0, ch[0]);
  }
  return __any_sync(kFullMask, inf);
}

// ---- parameters (phase 2) ----------------------------------------------------------------------------

template <Format D>
__device__ __forceinline__ void Phase2(const Warp& w) {
  using T = FormatTraits<D>;
  const SegmentCodec c{D, static_cast<Grouping>(w.seg.dst_grouping), w.seg.dst_group};
  const SegmentDims dims{w.tokens, w.channels};
  const int groups = NumGroups(c, dims);
  __syncwarp();
  float seg_scale = 0.0f;
  if constexpr (kTwoLevel<D>) {
    float m = 0.0f;  // symmetric: sm_b holds each group's absmax
    for (int g = w.lane; g < groups; g += 32) m = fmaxf(m, w.sm_b[g]);
    for (int k = 1; k < 32; k <<= 1) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, k));
    GroupStats all;
    all.lo = -m, all.hi = m;
    seg_scale = MakeSegmentScale<D>(all);
    if (w.lane == 0)
      *reinterpret_cast<float*>(w.dst_params + SegmentScaleOffset<D>(c, dims)) = seg_scale;
  }
  // Four groups per lane per step, loads first: their long dependent chains (division, fp16/E4M3
  // rounding, reciprocal) interleave.
  constexpr int kU = 4;
  for (int g0 = w.lane; g0 < groups; g0 += 32 * kU) {
    Acc<D> a[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int g = g0 + 32 * u;
      if (g < groups) {
        a[u].hi = w.sm_b[g];
        if constexpr (!kSymmetric<D>) a[u].lo = w.sm_a[g];
      }
    }
    QParams q[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) q[u] = MakeGroupParams<D>(a[u].Stats(), seg_scale);
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int g = g0 + 32 * u;
      if (g >= groups) break;
      uint32_t word = 0;
      T::StoreParams(reinterpret_cast<uint8_t*>(&word), q[u]);
      uint8_t* p = w.dst_params + g * T::kParamBytes;
      if constexpr (T::kParamBytes == 1) *p = static_cast<uint8_t>(word);
      if constexpr (T::kParamBytes == 2) *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(word);
      if constexpr (T::kParamBytes == 4) *reinterpret_cast<uint32_t*>(p) = word;
      w.sm_a[g] = q[u].inv_scale;
      w.sm_b[g] = q[u].offset;
    }
  }
  __syncwarp();
}

// ---- encode (phase 3) --------------------------------------------------------------------------------

template <Format D>
struct DstState {
  int cached_tg = -1;
  float inv[8], offset[8];
};

template <Format D>
__device__ __forceinline__ void EncodeVec(const Warp& w, int n, const float (&x)[8], DstState<D>& ds) {
  using T = FormatTraits<D>;
  uint32_t codes[8];
  if constexpr (T::kParamBytes == 0) {
#pragma unroll
    for (int j = 0; j < 8; ++j) codes[j] = T::Encode(x[j], QParams{});
  } else {
    const auto grouping = static_cast<Grouping>(w.seg.dst_grouping);
    if (grouping == Grouping::kPerChannel) {
      const int tg = n >> w.dst_tg_shift;
      if (tg != ds.cached_tg) {
        const float4* a = reinterpret_cast<const float4*>(w.sm_a + tg * w.channels + w.c0);
        const float4 a0 = a[0], a1 = a[1];
        ds.inv[0] = a0.x, ds.inv[1] = a0.y, ds.inv[2] = a0.z, ds.inv[3] = a0.w;
        ds.inv[4] = a1.x, ds.inv[5] = a1.y, ds.inv[6] = a1.z, ds.inv[7] = a1.w;
        if constexpr (!kSymmetric<D>) {
          const float4* b = reinterpret_cast<const float4*>(w.sm_b + tg * w.channels + w.c0);
          const float4 b0 = b[0], b1 = b[1];
          ds.offset[0] = b0.x, ds.offset[1] = b0.y, ds.offset[2] = b0.z, ds.offset[3] = b0.w;
          ds.offset[4] = b1.x, ds.offset[5] = b1.y, ds.offset[6] = b1.z, ds.offset[7] = b1.w;
        }
        ds.cached_tg = tg;
      }
    } else {
      const int g = grouping == Grouping::kPerToken
                        ? w.dst_g_base + n * w.dst_g_step
                        : 0;
      const float inv = w.sm_a[g];
      const float off = kSymmetric<D> ? 0.0f : w.sm_b[g];
#pragma unroll
      for (int j = 0; j < 8; ++j) ds.inv[j] = inv, ds.offset[j] = off;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      QParams q;
      q.inv_scale = ds.inv[j];
      q.offset = kSymmetric<D> ? 0.0f : ds.offset[j];
      codes[j] = T::Encode(x[j], q);
    }
  }
  if (w.on) StoreCodes<D>(w.dst, w.Vector(n), codes);
}

// ---- one segment -------------------------------------------------------------------------------------

template <Format S, Format D>
__device__ __forceinline__ void TranscodeSegment(const Warp& w) {
  SrcState<S> ss;
  InitSrc<S>(w, ss);
  uint32_t raw[kVecs][4];
  constexpr bool kStats = FormatTraits<D>::kParamBytes > 0;
  if constexpr (kStats) {
    if (Phase1<S, D, false>(w, ss, raw)) Phase1<S, D, true>(w, ss, raw);
    Phase2<D>(w);
  }
  DstState<D> ds;
  for (int base = 0; base < w.per_lane; base += kVecs) {
    if (!(kStats && w.per_lane <= kVecs)) {  // one chunk with statistics: still in registers (measured
                                              // faster than re-reading it from L2, despite some spills)
#pragma unroll
      for (int i = 0; i < kVecs; ++i)
        if (base + i < w.per_lane && w.on) LoadRaw<S>(w.src, w.Vector(base + i), raw[i]);
    }
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int n = base + i;
      if (n >= w.per_lane) break;
      float x[8];
      DecodeVec<S>(w, n, raw[i], ss, x);
      EncodeVec<D>(w, n, x, ds);
    }
  }
}

__device__ __forceinline__ void CopySegment(const Warp& w, uint32_t data_bytes, uint32_t param_bytes) {
  constexpr uint32_t kStep = 32 * 16;
  for (uint32_t base = w.lane * 16; base < data_bytes; base += kVecs * kStep) {
    uint4 v[kVecs];
#pragma unroll
    for (int i = 0; i < kVecs; ++i)
      if (base + i * kStep < data_bytes) v[i] = __ldg(reinterpret_cast<const uint4*>(w.src + base + i * kStep));
#pragma unroll
    for (int i = 0; i < kVecs; ++i)
      if (base + i * kStep < data_bytes) *reinterpret_cast<uint4*>(w.dst + base + i * kStep) = v[i];
  }
  for (uint32_t off = w.lane; off < param_bytes; off += 32) w.dst_params[off] = w.src_params[off];
}

// Bytes of a segment's data and parameter record under (format, grouping, group) of the table.
template <unsigned kSet>
__device__ __forceinline__ void SegmentBytes(uint8_t format, uint8_t grouping, uint16_t group, int tokens,
                                             int channels, uint32_t& data, uint32_t& params) {
  With<kSet>(format, [&](auto tag) {
    constexpr Format F = decltype(tag)::kFormat;
    using T = FormatTraits<F>;
    const SegmentCodec c{F, static_cast<Grouping>(grouping), group};
    const SegmentDims d{tokens, channels};
    data = static_cast<uint32_t>(tokens) * channels * T::kBits / 8;
    params = T::kParamBytes ? NumGroups(c, d) * T::kParamBytes + T::kSegmentParamBytes : 0;
  });
}

// The warp's segment: pointers and lane geometry. Returns false when the warp has no segment.
// kAnyHeadDim: head_dim 96 possible (only the generic kernel; the host sends 96 there). Otherwise all 32
// lanes are active and the compiler folds the idle-lane guards away.
template <int kWarps, bool kAnyHeadDim>
__device__ __forceinline__ bool SetUp(const Params& p, Warp& w) {
  extern __shared__ float4 smem_raw[];
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int s = (blockIdx.z * gridDim.y + blockIdx.y) * kWarps + warp;
  if (s >= p.num_segments) return false;
  const uint32_t page = blockIdx.x;
  w.seg = p.segments[s];
  const uint64_t in_slot = p.in.slots ? p.in.slots[page] : page;
  const uint64_t out_slot = p.out.slots ? p.out.slots[page] : page;
  w.src = p.in.data + in_slot * p.in.data_stride + w.seg.src_data;
  w.src_params = p.in.params ? p.in.params + in_slot * p.in.params_stride + w.seg.src_params : nullptr;
  w.dst = p.out.data + out_slot * p.out.data_stride + w.seg.dst_data;
  w.dst_params = p.out.params ? p.out.params + out_slot * p.out.params_stride + w.seg.dst_params : nullptr;
  // Per warp: [2 * smem_groups] floats of statistics/parameters, then (generic path) the values.
  w.sm_a = reinterpret_cast<float*>(smem_raw) + warp * p.smem_floats_per_warp;
  w.sm_b = w.sm_a + p.smem_groups;
  w.vals = w.sm_b + p.smem_groups;
  w.lane = static_cast<int>(threadIdx.x % 32);
  w.tokens = p.tokens;
  w.channels = p.channels;
  w.R = p.channels / 8;
  w.rps = kAnyHeadDim ? 32 / w.R : 32 >> (__ffs(w.R) - 1);
  w.active = kAnyHeadDim ? w.rps * w.R : 32;
  w.on = kAnyHeadDim ? w.lane < w.active : true;
  const int l = w.on ? w.lane : 0;
  w.lane_row = kAnyHeadDim ? l / w.R : l >> (__ffs(w.R) - 1);
  w.c0 = (kAnyHeadDim ? l % w.R : l & (w.R - 1)) * 8;
  w.per_lane = kAnyHeadDim ? p.tokens / w.rps : p.tokens >> (__ffs(w.rps) - 1);
  // Per channel: a token group of tpg tokens is tpg / rps consecutive n (a power of two). Per token:
  // group of (token, c0) = token * (channels / gs) + c0 / gs, token = n * rps + lane_row.
  auto geometry = [&](uint8_t grouping, int group, int& tg_shift, int& g_base, int& g_step) {
    if constexpr (kAnyHeadDim) {
      tg_shift = static_cast<Grouping>(grouping) == Grouping::kPerChannel ? __ffs(group / w.rps) - 1 : 0;
      const int per_row = w.channels / group;
      g_step = w.rps * per_row;
      g_base = w.lane_row * per_row + w.c0 / group;
    } else {  // head_dim 64/128/256: every group size is a power of two, so shifts
      const int log_g = __ffs(group) - 1, log_rps = __ffs(w.rps) - 1, log_d = __ffs(w.channels) - 1;
      tg_shift = static_cast<Grouping>(grouping) == Grouping::kPerChannel ? log_g - log_rps : 0;
      g_step = 1 << (log_rps + log_d - log_g);
      g_base = (w.lane_row << (log_d - log_g)) + (w.c0 >> log_g);
    }
  };
  geometry(w.seg.src_grouping, w.seg.src_group, w.src_tg_shift, w.src_g_base, w.src_g_step);
  geometry(w.seg.dst_grouping, w.seg.dst_group, w.dst_tg_shift, w.dst_g_base, w.dst_g_step);
  w.group_first = kAnyHeadDim ? (w.c0 / 8) % (w.seg.dst_group / 8) == 0
                              : ((w.c0 >> 3) & ((w.seg.dst_group >> 3) - 1)) == 0;
  return true;
}

// Segments whose codecs are equal are copied byte for byte; returns whether it was one.
template <unsigned kSet>
__device__ __forceinline__ bool CopyIfSame(const Warp& w) {
  if (w.seg.src_format != w.seg.dst_format || w.seg.src_grouping != w.seg.dst_grouping ||
      w.seg.src_group != w.seg.dst_group)
    return false;
  uint32_t data = 0, params = 0;
  SegmentBytes<kSet>(w.seg.src_format, w.seg.src_grouping, w.seg.src_group, w.tokens, w.channels, data, params);
  CopySegment(w, data, params);
  return true;
}

// Page-out / page-in body: source formats kSrc, destination formats kDst (sets of Bit(Format)); one
// transcoder per (source, destination) pair of the sets.
template <unsigned kSrc, unsigned kDst>
__device__ __forceinline__ void TranscodeWarp(const Params& p) {
  Warp w;
  if (!SetUp<kWarpsPerCta, false>(p, w)) return;  // whole warps leave; the kernel has no block-level barrier
  if (CopyIfSame<kSrc | kDst>(w)) return;
  With<kSrc>(w.seg.src_format, [&](auto st) {
    With<kDst>(w.seg.dst_format, [&](auto dt) { TranscodeSegment<decltype(st)::kFormat, decltype(dt)::kFormat>(w); });
  });
}

// Generic body (any formats; one warp per CTA): decode the whole segment into shared memory, then
// encode from there. 7 decoders + 7 encoders.
__device__ __forceinline__ void TranscodeWarpGeneric(const Params& p) {
  Warp w;
  if (!SetUp<1, true>(p, w)) return;
  if (CopyIfSame<kAllFormats>(w)) return;
  With<kAllFormats>(w.seg.src_format, [&](auto st) {
    constexpr Format S = decltype(st)::kFormat;
    SrcState<S> ss;
    InitSrc<S>(w, ss);
    uint32_t raw[kVecs][4];
    for (int base = 0; base < w.per_lane; base += kVecs) {
#pragma unroll
      for (int i = 0; i < kVecs; ++i)
        if (base + i < w.per_lane && w.on) LoadRaw<S>(w.src, w.Vector(base + i), raw[i]);
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const int n = base + i;
        if (n >= w.per_lane) break;
        float x[8];
        DecodeVec<S>(w, n, raw[i], ss, x);
        if (w.on) {
          float4* v = reinterpret_cast<float4*>(w.vals + w.Vector(n) * 8);
          v[0] = make_float4(x[0], x[1], x[2], x[3]);
          v[1] = make_float4(x[4], x[5], x[6], x[7]);
        }
      }
    }
  });
  __syncwarp();
  With<kAllFormats>(w.seg.dst_format, [&](auto dt) { TranscodeSegment<kSmemF32, decltype(dt)::kFormat>(w); });
}

}  // namespace kvtier::cuda_transcode
