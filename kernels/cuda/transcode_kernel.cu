// The CUDA transcode kernel: one warp per (page, segment). See kernels/cuda/transcode_cuda.h for the
// contract and the work split. Everything format-specific comes from FormatTraits; this file only
// arranges loads, reductions and stores.
//
// Lane layout: a segment is tokens x channels values, seen as vectors of 8 consecutive channels of one
// token (16 bytes of fp16). R = channels / 8 vectors make a token row; vector n of lane l is
// v = n * 32 + l, its token v / R and its channel vector l % R (constant per lane because 32 % R == 0).
// A lane loads up to kVecsPerChunk vectors at once (all loads in flight, raw words kept in registers)
// and decodes them half a chunk at a time; larger segments (block 32/64 or head_dim 256) are processed
// in chunks, re-reading the source (from L1/L2) after a statistics pre-pass.
#include <cuda_runtime.h>

#include "kernels/cuda/transcode_kernel.h"
#include "kernels/format.h"
#include "kernels/segment.h"

namespace kvtier::cuda_transcode {
namespace {

// Tuning knobs (compile-time; the defaults are what bench/results measured): vectors a lane keeps in
// flight, and the CTAs per SM the page-out and page-in instances are register-limited to (the generic
// instance gets 3).
#ifndef KVTIER_TRANSCODE_VECS
#define KVTIER_TRANSCODE_VECS 8
#endif
#ifndef KVTIER_TRANSCODE_MIN_CTAS
#define KVTIER_TRANSCODE_MIN_CTAS 4
#endif
constexpr int kVecsPerChunk = KVTIER_TRANSCODE_VECS;
constexpr unsigned kFullMask = 0xffffffffu;

constexpr unsigned Bit(Format f) { return 1u << static_cast<int>(f); }
constexpr unsigned kAllFormats = (1u << kNumFormats) - 1;
constexpr unsigned kPassThrough = Bit(Format::kFp16) | Bit(Format::kBf16);

// The device-side point where a runtime format becomes a template parameter (a warp-uniform switch).
// Only the formats in kAllowed are instantiated; the host guarantees that no other format reaches it.
template <unsigned kAllowed, class Fn>
__device__ __forceinline__ void DispatchDevice(uint8_t f, Fn&& fn) {
  switch (static_cast<Format>(f)) {
    case Format::kBf16:
      if constexpr ((kAllowed & Bit(Format::kBf16)) != 0) return fn(FormatTag<Format::kBf16>{});
      break;
    case Format::kFp8E4m3:
      if constexpr ((kAllowed & Bit(Format::kFp8E4m3)) != 0) return fn(FormatTag<Format::kFp8E4m3>{});
      break;
    case Format::kFp8E5m2:
      if constexpr ((kAllowed & Bit(Format::kFp8E5m2)) != 0) return fn(FormatTag<Format::kFp8E5m2>{});
      break;
    case Format::kInt8:
      if constexpr ((kAllowed & Bit(Format::kInt8)) != 0) return fn(FormatTag<Format::kInt8>{});
      break;
    case Format::kInt4:
      if constexpr ((kAllowed & Bit(Format::kInt4)) != 0) return fn(FormatTag<Format::kInt4>{});
      break;
    default:
      break;
  }
  return fn(FormatTag<Format::kFp16>{});
}

// Which source and destination formats a kernel instance handles.
template <Path P>
struct PathFormats {
  static constexpr unsigned kSrc = P == Path::kFromPassThrough ? kPassThrough : kAllFormats;
  static constexpr unsigned kDst = P == Path::kToPassThrough ? kPassThrough : kAllFormats;
};

struct Warp {
  SegmentPlan seg;
  const uint8_t* __restrict__ src;
  const uint8_t* __restrict__ src_params;
  uint8_t* __restrict__ dst;
  uint8_t* __restrict__ dst_params;
  int lane;
  int rows_lanes;  // R: vectors per token row (8, 16 or 32)
  int row_shift;   // log2(R)
  int c0;          // first channel of this lane's vector
  int per_lane;    // vectors per lane in the whole segment
  // kPerToken parameter group of (token, c0) = token * groups_per_row + group_in_row.
  int src_groups_per_row, src_group_in_row;
  int dst_groups_per_row, dst_group_in_row;
  __device__ int Token(int n) const { return (n * 32 + lane) >> row_shift; }
  __device__ int Vector(int n) const { return n * 32 + lane; }
};

// Raw words of the vectors a lane holds: 16, 8 or 4 bytes per vector depending on the code width.
struct RawChunk {
  uint32_t w[kVecsPerChunk][4];
};

template <Format F>
__device__ __forceinline__ void LoadRaw(const uint8_t* data, int v, uint32_t (&w)[4]) {
  constexpr int kBits = FormatTraits<F>::kBits;
  if constexpr (kBits == 16) {
    const uint4 x = *reinterpret_cast<const uint4*>(data + v * 16);
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
  } else if constexpr (kBits == 8) {
    const uint2 x = *reinterpret_cast<const uint2*>(data + v * 8);
    w[0] = x.x, w[1] = x.y;
  } else {
    w[0] = *reinterpret_cast<const uint32_t*>(data + v * 4);
  }
}

// Code j (0..7) of a vector's raw words.
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
    uint4 w;
    w.x = c[0] | (c[1] << 16);
    w.y = c[2] | (c[3] << 16);
    w.z = c[4] | (c[5] << 16);
    w.w = c[6] | (c[7] << 16);
    *reinterpret_cast<uint4*>(data + v * 16) = w;
  } else if constexpr (kBits == 8) {
    uint2 w;
    w.x = c[0] | (c[1] << 8) | (c[2] << 16) | (c[3] << 24);
    w.y = c[4] | (c[5] << 8) | (c[6] << 16) | (c[7] << 24);
    *reinterpret_cast<uint2*>(data + v * 8) = w;
  } else {
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) w |= c[j] << (4 * j);
    *reinterpret_cast<uint32_t*>(data + v * 4) = w;
  }
}

// Parameter records through registers with aligned accesses (the traits' memcpy-based LoadParams /
// StoreParams would otherwise become byte accesses): one group at p (aligned to its size), or the 8
// consecutive per-channel groups of a lane (16-byte aligned: c0 is a multiple of 8).
template <class T>
__device__ __forceinline__ QParams LoadParamsAt(const uint8_t* p) {
  uint32_t word = 0;
  if constexpr (T::kParamBytes == 2) word = *reinterpret_cast<const uint16_t*>(p);
  if constexpr (T::kParamBytes == 4) word = *reinterpret_cast<const uint32_t*>(p);
  return T::LoadParams(reinterpret_cast<const uint8_t*>(&word));
}

template <class T>
__device__ __forceinline__ void StoreParamsAt(uint8_t* p, const QParams& q) {
  uint32_t word = 0;
  T::StoreParams(reinterpret_cast<uint8_t*>(&word), q);
  if constexpr (T::kParamBytes == 2) *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(word);
  if constexpr (T::kParamBytes == 4) *reinterpret_cast<uint32_t*>(p) = word;
}

template <class T>
__device__ __forceinline__ void LoadParams8(const uint8_t* p, QParams (&q)[8]) {
  constexpr int kWords = 2 * T::kParamBytes;  // 8 records of kParamBytes, in 32-bit words
  if constexpr (kWords > 0) {
    uint32_t w[kWords];
#pragma unroll
    for (int o = 0; o < kWords; o += 4) {
      const uint4 v = *reinterpret_cast<const uint4*>(p + 4 * o);
      w[o] = v.x, w[o + 1] = v.y, w[o + 2] = v.z, w[o + 3] = v.w;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) q[j] = T::LoadParams(reinterpret_cast<const uint8_t*>(w) + j * T::kParamBytes);
  }
}

template <class T>
__device__ __forceinline__ void StoreParams8(uint8_t* p, const QParams (&q)[8]) {
  constexpr int kWords = 2 * T::kParamBytes;
  if constexpr (kWords > 0) {
    uint32_t w[kWords];
#pragma unroll
    for (int j = 0; j < 8; ++j) T::StoreParams(reinterpret_cast<uint8_t*>(w) + j * T::kParamBytes, q[j]);
#pragma unroll
    for (int o = 0; o < kWords; o += 4)
      *reinterpret_cast<uint4*>(p + 4 * o) = make_uint4(w[o], w[o + 1], w[o + 2], w[o + 3]);
  }
}

// Issues the loads of chunk k (vectors beyond per_lane are skipped): all in flight before any use.
template <Path P>
__device__ __forceinline__ void LoadChunk(const Warp& w, int k, RawChunk& raw) {
  DispatchDevice<PathFormats<P>::kSrc>(w.seg.src_format, [&](auto tag) {
#pragma unroll
    for (int i = 0; i < kVecsPerChunk; ++i)
      if (k * kVecsPerChunk + i < w.per_lane)
        LoadRaw<decltype(tag)::kFormat>(w.src, w.Vector(k * kVecsPerChunk + i), raw.w[i]);
  });
}

// Decodes vectors h*kHalf .. h*kHalf+kHalf-1 of chunk k from raw words into vals.
constexpr int kHalf = kVecsPerChunk / 2;
template <Path P>
__device__ __forceinline__ void DecodeHalf(const Warp& w, int k, int h, const RawChunk& raw, float (&vals)[kHalf][8]) {
  DispatchDevice<PathFormats<P>::kSrc>(w.seg.src_format, [&](auto tag) {
    constexpr Format F = decltype(tag)::kFormat;
    using T = FormatTraits<F>;
    const auto grouping = static_cast<Grouping>(w.seg.src_grouping);
    QParams pc[8];
    if (grouping == Grouping::kPerChannel) {
      LoadParams8<T>(w.src_params + w.c0 * T::kParamBytes, pc);
    } else if (grouping == Grouping::kPerSegment) {
      pc[0] = LoadParamsAt<T>(w.src_params);
#pragma unroll
      for (int j = 1; j < 8; ++j) pc[j] = pc[0];
    }
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const int n = k * kVecsPerChunk + h * kHalf + i;
      if (n >= w.per_lane) break;
      QParams pt{};
      if (grouping == Grouping::kPerToken)
        pt = LoadParamsAt<T>(w.src_params + (w.Token(n) * w.src_groups_per_row + w.src_group_in_row) * T::kParamBytes);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        vals[i][j] = T::Decode(CodeAt<F>(raw.w[h * kHalf + i], j), grouping == Grouping::kPerToken ? pt : pc[j]);
    }
  });
}

__device__ __forceinline__ GroupStats ShuffleXor(const GroupStats& s, int mask) {
  GroupStats o;
  o.lo = __shfl_xor_sync(kFullMask, s.lo, mask);
  o.hi = __shfl_xor_sync(kFullMask, s.hi, mask);
  return o;
}

// Merges stats over the lanes whose index differs only in the bits first_mask .. 16.
__device__ __forceinline__ void ReduceLanes(GroupStats& s, int first_mask) {
  for (int m = first_mask; m < 32; m <<= 1) s.Merge(ShuffleXor(s, m));
}

// Pre-pass for groups that span tokens: lane-local per-channel stats over every vector, then across
// lanes (per channel: lanes of equal channel vector; per segment: every lane, every channel).
template <Path P>
__device__ __forceinline__ void CrossTokenStats(const Warp& w, int chunks, RawChunk& raw, GroupStats (&st)[8]) {
  for (int k = 0; k < chunks; ++k) {
    LoadChunk<P>(w, k, raw);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float vals[kHalf][8];
      DecodeHalf<P>(w, k, h, raw, vals);
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        if (k * kVecsPerChunk + h * kHalf + i >= w.per_lane) break;
#pragma unroll
        for (int j = 0; j < 8; ++j) st[j].Add(vals[i][j]);
      }
    }
  }
  if (static_cast<Grouping>(w.seg.dst_grouping) == Grouping::kPerChannel) {
#pragma unroll
    for (int j = 0; j < 8; ++j) ReduceLanes(st[j], w.rows_lanes);
  } else {
#pragma unroll
    for (int j = 1; j < 8; ++j) st[0].Merge(st[j]);
    ReduceLanes(st[0], 1);
  }
}

// Encodes half h of chunk k from vals; q holds the per-channel / per-segment parameters of the pre-pass.
template <Path P>
__device__ __forceinline__ void EncodeHalf(const Warp& w, int k, int h, const float (&vals)[kHalf][8],
                                           const QParams (&q)[8]) {
  DispatchDevice<PathFormats<P>::kDst>(w.seg.dst_format, [&](auto tag) {
    constexpr Format F = decltype(tag)::kFormat;
    using T = FormatTraits<F>;
    const bool per_token = static_cast<Grouping>(w.seg.dst_grouping) == Grouping::kPerToken;
    const int group_lanes = w.seg.dst_group / 8;
    if (per_token) {  // parameters per (token, group): reduce over the group's lanes, vector by vector
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        const int n = k * kVecsPerChunk + h * kHalf + i;
        if (n >= w.per_lane) break;
        GroupStats s;
#pragma unroll
        for (int j = 0; j < 8; ++j) s.Add(vals[i][j]);
        for (int m = 1; m < group_lanes; m <<= 1) s.Merge(ShuffleXor(s, m));
        const QParams pt = T::MakeParams(s);
        if ((w.c0 / 8) % group_lanes == 0)
          StoreParamsAt<T>(w.dst_params + (w.Token(n) * w.dst_groups_per_row + w.dst_group_in_row) * T::kParamBytes,
                           pt);
        uint32_t codes[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) codes[j] = T::Encode(vals[i][j], pt);
        StoreCodes<F>(w.dst, w.Vector(n), codes);
      }
    } else {  // per channel, per segment or none: parameters from the pre-pass (or none)
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        const int n = k * kVecsPerChunk + h * kHalf + i;
        if (n >= w.per_lane) break;
        uint32_t codes[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) codes[j] = T::Encode(vals[i][j], q[j]);
        StoreCodes<F>(w.dst, w.Vector(n), codes);
      }
    }
  });
}

__device__ __forceinline__ void CopySegment(const Warp& w, uint32_t data_bytes, uint32_t param_bytes) {
  constexpr uint32_t kStep = 32 * 16;
  for (uint32_t base = w.lane * 16; base < data_bytes; base += kVecsPerChunk * kStep) {
    uint4 v[kVecsPerChunk];
#pragma unroll
    for (int i = 0; i < kVecsPerChunk; ++i)
      if (base + i * kStep < data_bytes) v[i] = *reinterpret_cast<const uint4*>(w.src + base + i * kStep);
#pragma unroll
    for (int i = 0; i < kVecsPerChunk; ++i)
      if (base + i * kStep < data_bytes) *reinterpret_cast<uint4*>(w.dst + base + i * kStep) = v[i];
  }
  for (uint32_t off = w.lane; off < param_bytes; off += 32) w.dst_params[off] = w.src_params[off];
}

template <Path P>
__device__ __forceinline__ uint32_t ParamBytes(uint8_t format, uint8_t grouping, uint16_t group, int tokens,
                                               int channels) {
  int groups = 0;
  switch (static_cast<Grouping>(grouping)) {
    case Grouping::kPerSegment:
      groups = 1;
      break;
    case Grouping::kPerChannel:
      groups = channels;
      break;
    case Grouping::kPerToken:
      groups = tokens * (channels / group);
      break;
    default:
      break;
  }
  uint32_t bytes = 0;
  DispatchDevice<PathFormats<P>::kSrc>(
      format, [&](auto tag) { bytes = groups * FormatTraits<decltype(tag)::kFormat>::kParamBytes; });
  return bytes;
}

template <Path P>
__global__ void __launch_bounds__(kWarpsPerCta * 32, P == Path::kGeneric ? 3 : KVTIER_TRANSCODE_MIN_CTAS)
    TranscodeKernel(const Params p) {
  const int s = (blockIdx.z * gridDim.y + blockIdx.y) * kWarpsPerCta + static_cast<int>(threadIdx.x / 32);
  if (s >= p.num_segments) return;  // whole warps leave; the kernel has no block-level barrier
  const uint32_t page = blockIdx.x;
  Warp w;
  w.seg = p.segments[s];
  const uint64_t in_slot = p.in.slots ? p.in.slots[page] : page;
  const uint64_t out_slot = p.out.slots ? p.out.slots[page] : page;
  w.src = p.in.data + in_slot * p.in.data_stride + w.seg.src_data;
  w.src_params = p.in.params ? p.in.params + in_slot * p.in.params_stride + w.seg.src_params : nullptr;
  w.dst = p.out.data + out_slot * p.out.data_stride + w.seg.dst_data;
  w.dst_params = p.out.params ? p.out.params + out_slot * p.out.params_stride + w.seg.dst_params : nullptr;
  w.lane = static_cast<int>(threadIdx.x % 32);
  w.rows_lanes = p.channels / 8;
  w.row_shift = __ffs(w.rows_lanes) - 1;
  w.c0 = (w.lane & (w.rows_lanes - 1)) * 8;
  w.per_lane = p.tokens * p.channels / (8 * 32);
  w.src_groups_per_row = p.channels / w.seg.src_group;
  w.src_group_in_row = w.c0 / w.seg.src_group;
  w.dst_groups_per_row = p.channels / w.seg.dst_group;
  w.dst_group_in_row = w.c0 / w.seg.dst_group;

  if (w.seg.src_format == w.seg.dst_format && w.seg.src_grouping == w.seg.dst_grouping &&
      w.seg.src_group == w.seg.dst_group) {
    uint32_t data_bytes = 0;
    DispatchDevice<PathFormats<P>::kSrc>(w.seg.src_format, [&](auto tag) {
      data_bytes = static_cast<uint32_t>(p.tokens) * p.channels * FormatTraits<decltype(tag)::kFormat>::kBits / 8;
    });
    CopySegment(w, data_bytes,
                ParamBytes<P>(w.seg.src_format, w.seg.src_grouping, w.seg.src_group, p.tokens, p.channels));
    return;
  }

  RawChunk raw;
  QParams q[8];
  const int chunks = (w.per_lane + kVecsPerChunk - 1) / kVecsPerChunk;
  const auto dst_grouping = static_cast<Grouping>(w.seg.dst_grouping);
  const bool prepass =
      P != Path::kToPassThrough && (dst_grouping == Grouping::kPerChannel || dst_grouping == Grouping::kPerSegment);
  if (prepass) {
    GroupStats st[8];
    CrossTokenStats<P>(w, chunks, raw, st);
    DispatchDevice<PathFormats<P>::kDst>(w.seg.dst_format, [&](auto tag) {
      using T = FormatTraits<decltype(tag)::kFormat>;
      if (dst_grouping == Grouping::kPerChannel) {
#pragma unroll
        for (int j = 0; j < 8; ++j) q[j] = T::MakeParams(st[j]);
        if (w.lane < w.rows_lanes) StoreParams8<T>(w.dst_params + w.c0 * T::kParamBytes, q);
      } else {
        q[0] = T::MakeParams(st[0]);
#pragma unroll
        for (int j = 1; j < 8; ++j) q[j] = q[0];
        if (w.lane == 0) StoreParamsAt<T>(w.dst_params, q[0]);
      }
    });
  }
  for (int k = 0; k < chunks; ++k) {
    if (!(prepass && chunks == 1)) LoadChunk<P>(w, k, raw);  // one chunk: still in registers from the pre-pass
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float vals[kHalf][8];
      DecodeHalf<P>(w, k, h, raw, vals);
      EncodeHalf<P>(w, k, h, vals, q);
    }
  }
}

}  // namespace

cudaError_t LaunchTranscode(const Params& params, Path path, cudaStream_t stream) {
  // Pages along x: CTAs launched together work on the same few table entries, which the host sorted by
  // codec pair, so the warps resident on an SM run the same code path (the kernel is too large for the
  // instruction cache when K and V paths interleave).
  const uint32_t chunks = (params.num_segments + kWarpsPerCta - 1) / kWarpsPerCta;
  const uint32_t y = chunks < 65535 ? chunks : 65535;
  const dim3 grid(params.num_pages, y, (chunks + y - 1) / y);
  switch (path) {
    case Path::kFromPassThrough:
      TranscodeKernel<Path::kFromPassThrough><<<grid, kWarpsPerCta * 32, 0, stream>>>(params);
      break;
    case Path::kToPassThrough:
      TranscodeKernel<Path::kToPassThrough><<<grid, kWarpsPerCta * 32, 0, stream>>>(params);
      break;
    case Path::kGeneric:
      TranscodeKernel<Path::kGeneric><<<grid, kWarpsPerCta * 32, 0, stream>>>(params);
      break;
  }
  return cudaGetLastError();
}

}  // namespace kvtier::cuda_transcode
