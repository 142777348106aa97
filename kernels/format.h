// Block formats: the ONE description of how a segment of KV values is stored.
//
// A segment is the K (or V) of one KV head of one layer of one block: block_size tokens x head_dim
// channels. Its values are stored as codes in a data area laid out token-major ([token][channel], int4
// packing two channels per byte, low nibble first) and, for the quantized formats, as per-group
// parameters in a separate parameter area that lives in the page table (never interleaved with data).
//
// FormatTraits<F> below is the single definition of each format's element width, parameter storage,
// parameter derivation, encode and decode. The CPU reference, the CPU fast path and the CUDA kernels all
// call these functions (they are __host__ __device__); only their loop structure differs.
//
// Defined behaviour (see docs/formats.md):
//  - fp16/bf16 are pass-through: values are converted with IEEE round-to-nearest-even; NaN/Inf kept.
//  - quantized formats derive parameters from the FINITE values of a group only; NaN encodes as 0 and
//    +-Inf saturates to the largest code of the group's range.
//  - an all-zero (or all non-finite) group gets scale 0 and decodes to exactly 0; a constant group
//    decodes to the constant rounded down to fp16 (int4) or exactly (int8/fp8 when representable).
//  - fp16 parameters are rounded so that no finite value of the group is clipped: scales round up,
//    int4 offsets round down; magnitudes beyond the fp16 range (65504 * code range) saturate.
//  - fp4_e2m1 has two levels of parameters (an E4M3 byte per 16-value group, an fp32 scale per segment);
//    its E4M3 group scales round up for the same reason.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "kernels/common.h"
#include "kernels/fp4.h"
#include "kernels/fp8.h"
#include "kernels/half.h"

namespace kvtier {

enum class Format : uint8_t {
  kFp16 = 0,
  kBf16 = 1,
  kFp8E4m3 = 2,
  kFp8E5m2 = 3,
  kInt8 = 4,  // symmetric, codes -127..127, fp16 scale per group
  kInt4 = 5,  // asymmetric, codes 0..15, fp16 (scale, offset) per group; zero point = -offset/scale
  kFp4E2m1 = 6,  // E2M1 codes, E4M3 scale per 16 values, fp32 scale per segment (NVFP4 arrangement)
};
inline constexpr int kNumFormats = 7;

// Which values of a segment share one set of parameters.
enum class Grouping : uint8_t {
  kNone = 0,        // pass-through formats: no parameters
  kPerSegment = 1,  // one scale for the whole segment (fp8)
  kPerChannel = 2,  // one group per channel, spanning the block's tokens (KIVI-style K); fp4: per channel
                    // and per `group_size` (16) consecutive tokens
  kPerToken = 3,    // one group per token and per `group_size` consecutive channels (V)
  // One scale per channel taken from the layout's static (calibrated) scale set, NOT stored in the page
  // (int8 and fp8 only; set by a static-scales policy, transcoded by kernels/static_transcode.h).
  kStaticChannel = 4,
};

// The codec of one segment: its format and how its parameters are grouped.
struct SegmentCodec {
  Format format = Format::kFp16;
  Grouping grouping = Grouping::kNone;
  // kPerToken: channels per group, 0 means the whole head_dim. kPerChannel: tokens per group, 0 means the
  // whole block (fp4_e2m1 requires 16 for both groupings; the other formats 0 for kPerChannel).
  uint16_t group_size = 0;
  friend bool operator==(const SegmentCodec&, const SegmentCodec&) = default;
};

// Quantization parameters of one group, as used in registers.
struct QParams {
  float scale = 0.0f;
  float inv_scale = 0.0f;  // 1/scale, or 0 when scale is 0 (then every value encodes to the zero code)
  float offset = 0.0f;     // asymmetric formats: value of code 0
  uint32_t code = 0;       // two-level formats (fp4_e2m1): the stored group parameter (E4M3 scale byte)
};

// Running min/max over the finite values of a group; empty (no finite value yet) while lo > hi. The
// result of a min/max reduction does not depend on the order of the values except for the sign of a
// zero bound, which MakeParams never lets through (see ZeroToPositive).
struct GroupStats {
  float lo = __builtin_inff();
  float hi = -__builtin_inff();
  KVTIER_HD bool any() const { return lo <= hi; }
  KVTIER_HD void Add(float x) {
    if (fabsf(x) <= 3.402823466e38f) {  // skips NaN and +-Inf
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
  }
  KVTIER_HD void Merge(const GroupStats& o) {
    lo = fminf(lo, o.lo);
    hi = fmaxf(hi, o.hi);
  }
  KVTIER_HD float AbsMax() const { return any() ? fmaxf(fabsf(lo), fabsf(hi)) : 0.0f; }
};

// -0 becomes +0; everything else is unchanged.
KVTIER_HD float ZeroToPositive(float x) { return x == 0.0f ? 0.0f : x; }

KVTIER_HD float InverseOrZero(float scale) { return scale > 0.0f ? 1.0f / scale : 0.0f; }

// min(max(y, lo), hi) for a non-NaN y. Host: selects, so that loops over it vectorise (fminf/fmaxf do
// not without -ffast-math); device: fmin/fmax instructions. The two may differ only in the sign of a
// zero result, which RoundToInt erases.
KVTIER_HD float Clamp(float y, float lo, float hi) {
#if defined(__CUDA_ARCH__)
  return fminf(fmaxf(y, lo), hi);
#else
  return y < lo ? lo : (y > hi ? hi : y);
#endif
}

// Round to nearest, ties to even, of a finite y within the int32 range (one cvt.rni on the device).
KVTIER_HD int32_t RoundToInt(float y) {
#if defined(__CUDA_ARCH__)
  return __float2int_rn(y);
#else
  return static_cast<int32_t>(rintf(y));
#endif
}

// Scaled value with NaN mapped to 0 (Inf*0 and NaN inputs included), before rounding to a code.
KVTIER_HD float Scaled(float x, const QParams& p) {
  const float y = (x - p.offset) * p.inv_scale;
#if defined(__CUDA_ARCH__)
  return y != y ? 0.0f : y;
#else
  // The same select as a mask: GCC does not if-convert the select when the fp8 encoder's integer masks
  // follow, and the loop would not vectorise.
  return BitsToFloat(FloatToBits(y) & (0u - static_cast<uint32_t>(y == y)));
#endif
}

template <Format F>
struct FormatTraits;

template <>
struct FormatTraits<Format::kFp16> {
  static constexpr std::string_view kName = "fp16";
  static constexpr int kBits = 16;
  static constexpr int kParamBytes = 0;  // per group
  static constexpr int kSegmentParamBytes = 0;  // per segment, after the groups (two-level formats only)
  static KVTIER_HD QParams MakeParams(const GroupStats&) { return {}; }
  static KVTIER_HD void StoreParams(uint8_t*, const QParams&) {}
  static KVTIER_HD QParams LoadParams(const uint8_t*) { return {}; }
  static KVTIER_HD uint32_t Encode(float x, const QParams&) { return FloatToHalf(x); }
  static KVTIER_HD float Decode(uint32_t c, const QParams&) { return HalfToFloat(static_cast<uint16_t>(c)); }
};

template <>
struct FormatTraits<Format::kBf16> {
  static constexpr std::string_view kName = "bf16";
  static constexpr int kBits = 16;
  static constexpr int kParamBytes = 0;
  static constexpr int kSegmentParamBytes = 0;
  static KVTIER_HD QParams MakeParams(const GroupStats&) { return {}; }
  static KVTIER_HD void StoreParams(uint8_t*, const QParams&) {}
  static KVTIER_HD QParams LoadParams(const uint8_t*) { return {}; }
  static KVTIER_HD uint32_t Encode(float x, const QParams&) { return FloatToBf16(x); }
  static KVTIER_HD float Decode(uint32_t c, const QParams&) { return Bf16ToFloat(static_cast<uint16_t>(c)); }
};

// fp8 with one float32 scale per group (per segment by default): value = decode(code) * scale.
template <class Mini, Format F>
struct Fp8Traits {
  static constexpr int kBits = 8;
  static constexpr int kParamBytes = 4;
  static constexpr int kSegmentParamBytes = 0;
  static KVTIER_HD QParams MakeParams(const GroupStats& s) {
    QParams p;
    p.scale = s.AbsMax() / Mini::MaxFinite();
    p.inv_scale = InverseOrZero(p.scale);
    return p;
  }
  static KVTIER_HD void StoreParams(uint8_t* dst, const QParams& p) { memcpy(dst, &p.scale, 4); }
  static KVTIER_HD QParams LoadParams(const uint8_t* src) {
    QParams p;
    memcpy(&p.scale, src, 4);
    p.inv_scale = InverseOrZero(p.scale);
    return p;
  }
  static KVTIER_HD uint32_t Encode(float x, const QParams& p) { return Mini::Encode(Scaled(x, p)); }
  static KVTIER_HD float Decode(uint32_t c, const QParams& p) {
    return Mini::Decode(static_cast<uint8_t>(c)) * p.scale;
  }
};

template <>
struct FormatTraits<Format::kFp8E4m3> : Fp8Traits<Fp8E4m3, Format::kFp8E4m3> {
  static constexpr std::string_view kName = "fp8_e4m3";
};
template <>
struct FormatTraits<Format::kFp8E5m2> : Fp8Traits<Fp8E5m2, Format::kFp8E5m2> {
  static constexpr std::string_view kName = "fp8_e5m2";
};

// int8 symmetric: value = code * scale, code in [-127, 127], fp16 scale rounded up.
template <>
struct FormatTraits<Format::kInt8> {
  static constexpr std::string_view kName = "int8";
  static constexpr int kBits = 8;
  static constexpr int kParamBytes = 2;
  static constexpr int kSegmentParamBytes = 0;
  static KVTIER_HD QParams FromScaleBits(uint16_t bits) {
    QParams p;
    p.scale = HalfToFloat(bits);
    p.inv_scale = InverseOrZero(p.scale);
    return p;
  }
  static KVTIER_HD QParams MakeParams(const GroupStats& s) {
    return FromScaleBits(FloatToHalfRoundUp(s.AbsMax() / 127.0f));
  }
  static KVTIER_HD void StoreParams(uint8_t* dst, const QParams& p) {
    const uint16_t b = FloatToHalf(p.scale);  // exact: p.scale came from an fp16
    memcpy(dst, &b, 2);
  }
  static KVTIER_HD QParams LoadParams(const uint8_t* src) {
    uint16_t b;
    memcpy(&b, src, 2);
    return FromScaleBits(b);
  }
  static KVTIER_HD uint32_t Encode(float x, const QParams& p) {
    return static_cast<uint8_t>(static_cast<int8_t>(RoundToInt(Clamp(Scaled(x, p), -127.0f, 127.0f))));
  }
  static KVTIER_HD float Decode(uint32_t c, const QParams& p) {
    return static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(c))) * p.scale;
  }
};

// int4 asymmetric: value = code * scale + offset, code in [0, 15]; fp16 offset rounded down, fp16 scale
// rounded up so that [lo, hi] fits. Parameters are stored as (scale, offset) fp16 pairs.
template <>
struct FormatTraits<Format::kInt4> {
  static constexpr std::string_view kName = "int4";
  static constexpr int kBits = 4;
  static constexpr int kParamBytes = 4;
  static constexpr int kSegmentParamBytes = 0;
  static KVTIER_HD QParams FromBits(uint16_t scale_bits, uint16_t offset_bits) {
    QParams p;
    p.scale = HalfToFloat(scale_bits);
    p.inv_scale = InverseOrZero(p.scale);
    p.offset = HalfToFloat(offset_bits);
    return p;
  }
  // A -0 lower bound counts as +0: reductions in different orders (CPU lanes, GPU shuffles) may end
  // on either zero, and the stored offset must not depend on that.
  static KVTIER_HD QParams MakeParams(const GroupStats& s) {
    const uint16_t off = FloatToHalfRoundDown(s.any() ? ZeroToPositive(s.lo) : 0.0f);
    const float range = (s.any() ? s.hi : 0.0f) - HalfToFloat(off);
    return FromBits(FloatToHalfRoundUp(range / 15.0f), off);
  }
  static KVTIER_HD void StoreParams(uint8_t* dst, const QParams& p) {
    const uint16_t b[2] = {FloatToHalf(p.scale), FloatToHalf(p.offset)};
    memcpy(dst, b, 4);
  }
  static KVTIER_HD QParams LoadParams(const uint8_t* src) {
    uint16_t b[2];
    memcpy(b, src, 4);
    return FromBits(b[0], b[1]);
  }
  static KVTIER_HD uint32_t Encode(float x, const QParams& p) {
    return static_cast<uint32_t>(RoundToInt(Clamp(Scaled(x, p), 0.0f, 15.0f)));
  }
  static KVTIER_HD float Decode(uint32_t c, const QParams& p) {
    return fmaf(static_cast<float>(c & 0xfu), p.scale, p.offset);
  }
};

// fp4_e2m1, the NVFP4 arrangement: value = e2m1(code) * S, where S = fp32(e4m3(s) * G) with s the group's
// E4M3 scale byte (one per 16 values) and G the segment's fp32 scale. TWO-LEVEL: group parameters depend
// on the segment scale, so MakeParams/LoadParams take G (kSegmentParamBytes > 0; segment.h's
// MakeGroupParams/LoadGroupParams hide the difference). Derivation, from the finite values only:
//   G = M / 2688 (M the segment's absmax, 2688 = 6 * 448: the largest group then gets scale byte 448),
//   s = E4M3 rounded UP of min(m / fp32(6 G), 448) (m the group's absmax; 0 when G is 0), so m / S <= 6
//   up to fp32 rounding and no finite value is clipped by the scale,
//   code = E2M1 round-to-nearest-even, saturating, of x * (1/S); NaN -> 0, +-Inf -> +-6, sign of zero kept.
template <>
struct FormatTraits<Format::kFp4E2m1> {
  static constexpr std::string_view kName = "fp4_e2m1";
  static constexpr int kBits = 4;
  static constexpr int kParamBytes = 1;         // per group: the E4M3 scale byte
  static constexpr int kSegmentParamBytes = 4;  // per segment: fp32 G, after the group bytes
  static constexpr int kGroupValues = 16;       // values per group (16 tokens of a channel, or 16 channels)
  static KVTIER_HD float MakeSegmentScale(const GroupStats& segment) { return segment.AbsMax() / 2688.0f; }
  // Parameters of group scale byte `code` under segment scale g.
  static KVTIER_HD QParams FromCode(uint32_t code, float g) {
    QParams p;
    p.code = code;
    p.scale = Fp8E4m3::Decode(static_cast<uint8_t>(code)) * g;
    p.inv_scale = InverseOrZero(p.scale);
    return p;
  }
  static KVTIER_HD QParams MakeParams(const GroupStats& s, float g) {
    const float g6 = g * 6.0f;
    return FromCode(g6 > 0.0f ? E4m3CodeRoundUp(s.AbsMax() / g6) : 0u, g);
  }
  static KVTIER_HD void StoreParams(uint8_t* dst, const QParams& p) { dst[0] = static_cast<uint8_t>(p.code); }
  static KVTIER_HD QParams LoadParams(const uint8_t* src, float g) { return FromCode(src[0], g); }
  static KVTIER_HD void StoreSegmentScale(uint8_t* dst, float g) { memcpy(dst, &g, 4); }
  static KVTIER_HD float LoadSegmentScale(const uint8_t* src) {
    float g;
    memcpy(&g, src, 4);
    return g;
  }
  static KVTIER_HD uint32_t Encode(float x, const QParams& p) { return Fp4E2m1::Encode(Scaled(x, p)); }
  static KVTIER_HD float Decode(uint32_t c, const QParams& p) { return Fp4E2m1::Decode(c) * p.scale; }
};

template <Format F>
struct FormatTag {
  static constexpr Format kFormat = F;
  using Traits = FormatTraits<F>;
};

// The single host boundary where a runtime format becomes a template parameter.
template <class Fn>
decltype(auto) DispatchFormat(Format f, Fn&& fn) {
  switch (f) {
    case Format::kBf16:
      return fn(FormatTag<Format::kBf16>{});
    case Format::kFp8E4m3:
      return fn(FormatTag<Format::kFp8E4m3>{});
    case Format::kFp8E5m2:
      return fn(FormatTag<Format::kFp8E5m2>{});
    case Format::kInt8:
      return fn(FormatTag<Format::kInt8>{});
    case Format::kInt4:
      return fn(FormatTag<Format::kInt4>{});
    case Format::kFp4E2m1:
      return fn(FormatTag<Format::kFp4E2m1>{});
    case Format::kFp16:
      break;
  }
  return fn(FormatTag<Format::kFp16>{});
}

// Runtime facts about a format, derived from its traits.
struct FormatInfo {
  std::string_view name;
  int bits;
  int param_bytes;          // per group
  int segment_param_bytes;  // per segment, after the groups' parameters (two-level formats)
};

inline FormatInfo GetFormatInfo(Format f) {
  return DispatchFormat(f, [](auto tag) {
    using T = typename decltype(tag)::Traits;
    return FormatInfo{T::kName, T::kBits, T::kParamBytes, T::kSegmentParamBytes};
  });
}

inline bool IsQuantized(Format f) { return GetFormatInfo(f).param_bytes > 0; }

std::optional<Format> ParseFormat(std::string_view name);
std::optional<Grouping> ParseGrouping(std::string_view name);
std::string_view GroupingName(Grouping g);

// The default codec of a format for K or V: K per-channel, V per-token (int4 V in groups of 32, fp4 K in
// groups of 16 tokens and V of 16 channels), fp8 per segment, pass-through formats without parameters.
SegmentCodec DefaultCodec(Format f, Operand op);

}  // namespace kvtier
