// FP8 codecs (OCP E4M3 "fn" and E5M2) on raw bytes, identical on host and device.
//
// Encoding rounds to nearest, ties to even, and SATURATES: finite values beyond the largest finite code
// become that code (+-448 for E4M3, +-57344 for E5M2), and so do infinities. This matches CUDA's
// __NV_SATFINITE conversions. (torch/ml_dtypes instead turn |x| beyond the rounding range into NaN;
// kvtier scales values into range before encoding, so the two agree on everything kvtier encodes.)
// NaN encodes to the NaN code 0x7f (0xff with the sign bit) in both formats.
//
// Device code on sm_89+ uses the hardware conversions (cvt.rn.satfinite, one instruction per pair),
// host code the portable software version below; the two give the same code for every finite and
// infinite input (tested exhaustively over fp16 inputs and on random floats by the GPU transcode test),
// and NaN is handled before the hardware conversion so that it maps to the same code too.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common.h"
#include "kernels/half.h"

#if defined(__CUDACC__)
#include <cuda_fp8.h>
#endif

namespace kvtier {

// Parameters of a small IEEE-like binary format.
template <int kExpBits, int kManBits, int kBias, uint8_t kMaxCode, uint8_t kNanCode, bool kHasInf>
struct MiniFloat {
  static constexpr int kExp = kExpBits;
  static constexpr int kMan = kManBits;
  static constexpr int kMinNormalExp = 1 - kBias;           // exponent of the smallest normal
  static constexpr int kQuantumExp = 1 - kBias - kManBits;  // exponent of one subnormal step

  static KVTIER_HD float Pow2(int e) { return BitsToFloat(static_cast<uint32_t>(127 + e) << 23); }

  static KVTIER_HD float Decode(uint8_t code) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    // Every code, NaN and Inf included, converts exactly (NaN payloads may differ from the software
    // path; fp16/bf16 encoders canonicalise NaN, so no stored byte depends on them).
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(code, kExpBits == 4 ? __NV_E4M3 : __NV_E5M2)));
#else
    const bool neg = code & 0x80u;
    const int exp = (code >> kManBits) & ((1 << kExpBits) - 1);
    const int man = code & ((1 << kManBits) - 1);
    float v;
    if (kHasInf && exp == (1 << kExpBits) - 1) {
      v = man == 0 ? BitsToFloat(0x7f800000u) : BitsToFloat(0x7fc00000u);
    } else if (!kHasInf && (code & 0x7fu) == (kNanCode & 0x7fu)) {
      v = BitsToFloat(0x7fc00000u);
    } else if (exp == 0) {
      v = static_cast<float>(man) * Pow2(kQuantumExp);
    } else {
      v = static_cast<float>((1 << kManBits) + man) * Pow2(exp - kBias - kManBits);
    }
    return neg ? -v : v;
#endif
  }

  // The largest finite value, as a compile-time constant (equal to Decode(kMaxCode)).
  static constexpr float ConstPow2(int e) {
    return e >= 0 ? (e == 0 ? 1.0f : 2.0f * ConstPow2(e - 1)) : 0.5f * ConstPow2(e + 1);
  }
  static constexpr float kMaxFiniteValue = static_cast<float>((1 << kManBits) + (kMaxCode & ((1 << kManBits) - 1))) *
                                           ConstPow2((kMaxCode >> kManBits) - kBias - kManBits);
  static KVTIER_HD float MaxFinite() { return kMaxFiniteValue; }

  static KVTIER_HD uint8_t Encode(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    const uint8_t hw =
        static_cast<uint8_t>(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, kExpBits == 4 ? __NV_E4M3 : __NV_E5M2));
    const uint8_t nan = static_cast<uint8_t>(((__float_as_uint(f) >> 24) & 0x80u) | (kNanCode & 0x7fu));
    return f == f ? hw : nan;  // a select, not a branch: NaN maps to the host's code
#else
    // Branch-free, with masks rather than selects (so that host loops over it vectorise): round to nearest
    // even on the bit pattern for normal results and on a * 2^-kQuantumExp for subnormal ones, then
    // saturate and map NaN. Magnitude comparisons are on the bit patterns (monotonic for |f|).
    constexpr int kDrop = 23 - kManBits;
    constexpr uint32_t kMinNormalBits = static_cast<uint32_t>(127 + kMinNormalExp) << 23;
    constexpr uint32_t kMaxBits = (static_cast<uint32_t>((kMaxCode >> kManBits) - kBias + 127) << 23) |
                                  (static_cast<uint32_t>(kMaxCode & ((1 << kManBits) - 1)) << kDrop);
    const uint32_t bits = FloatToBits(f);
    const uint32_t sign = (bits >> 24) & 0x80u;
    const uint32_t abs_bits = bits & 0x7fffffffu;
    const uint32_t normal = ((abs_bits + ((1u << (kDrop - 1)) - 1u) + ((abs_bits >> kDrop) & 1u)) >> kDrop) -
                            (static_cast<uint32_t>(127 - kBias) << kManBits);
    const uint32_t is_sub = 0u - static_cast<uint32_t>(abs_bits < kMinNormalBits);
    const float small = BitsToFloat(abs_bits & is_sub);  // |f| when subnormal, else 0
    const uint32_t sub = static_cast<uint32_t>(RoundSubnormal(small * Pow2(-kQuantumExp)));
    uint32_t code = (sub & is_sub) | (normal & ~is_sub);
    const uint32_t sat = 0u - static_cast<uint32_t>((abs_bits >= kMaxBits) | (code > kMaxCode));  // Inf too
    code = (kMaxCode & sat) | (code & ~sat);
    const uint32_t nan = 0u - static_cast<uint32_t>(abs_bits > 0x7f800000u);
    code = ((kNanCode & 0x7fu) & nan) | (code & ~nan);
    return static_cast<uint8_t>(sign | code);
#endif
  }

 private:
  // Round to nearest even of 0 <= y <= 2^kManBits (exactly representable steps).
  static KVTIER_HD int RoundSubnormal(float y) { return static_cast<int>(rintf(y)); }
};

using Fp8E4m3 = MiniFloat<4, 3, 7, 0x7e, 0x7f, false>;
using Fp8E5m2 = MiniFloat<5, 2, 15, 0x7b, 0x7f, true>;

}  // namespace kvtier
