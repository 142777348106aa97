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
    const bool special = kHasInf ? ((code >> kManBits) & ((1 << kExpBits) - 1)) == (1 << kExpBits) - 1
                                 : (code & 0x7fu) == (kNanCode & 0x7fu);
    if (!special) return __half2float(__half(__nv_cvt_fp8_to_halfraw(code, kExpBits == 4 ? __NV_E4M3 : __NV_E5M2)));
#endif
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
  }

  static KVTIER_HD float MaxFinite() { return Decode(kMaxCode); }

  static KVTIER_HD uint8_t Encode(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    if (f == f)
      return static_cast<uint8_t>(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, kExpBits == 4 ? __NV_E4M3 : __NV_E5M2));
#endif
    const uint32_t bits = FloatToBits(f);
    const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
    const uint32_t abs_bits = bits & 0x7fffffffu;
    if (abs_bits > 0x7f800000u) return static_cast<uint8_t>(sign | (kNanCode & 0x7fu));
    const float a = BitsToFloat(abs_bits);
    if (a >= MaxFinite()) return static_cast<uint8_t>(sign | kMaxCode);
    // Quantum (spacing of representable values) at a's magnitude.
    int e = static_cast<int>(abs_bits >> 23) - 127;
    if (e < kMinNormalExp) e = kMinNormalExp;
    const float quantum = Pow2(e - kManBits);
    const float q = rintf(a / quantum) * quantum;  // exact: division by a power of two
    if (q >= MaxFinite()) return static_cast<uint8_t>(sign | kMaxCode);
    if (q == 0.0f) return sign;
    const uint32_t qb = FloatToBits(q);
    const int qe = static_cast<int>(qb >> 23) - 127;
    if (qe < kMinNormalExp) {
      const int man = static_cast<int>(q / Pow2(kQuantumExp));
      return static_cast<uint8_t>(sign | man);
    }
    const uint32_t man = (qb >> (23 - kManBits)) & ((1u << kManBits) - 1u);
    return static_cast<uint8_t>(sign | ((qe + kBias) << kManBits) | man);
  }
};

using Fp8E4m3 = MiniFloat<4, 3, 7, 0x7e, 0x7f, false>;
using Fp8E5m2 = MiniFloat<5, 2, 15, 0x7b, 0x7f, true>;

}  // namespace kvtier
