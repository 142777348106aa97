// fp16 and bf16 <-> fp32 conversions on raw 16-bit patterns, identical on host and device.
// Rounding is round-to-nearest-even; NaN stays NaN, overflow becomes Inf (IEEE behaviour). Device code
// uses the hardware conversions, host code a bit-exact software version (F16C when the host has it).
// Every NaN converts to the canonical positive quiet NaN (fp16 0x7e00, bf16 0x7fc0) on host and device,
// so results never depend on NaN payloads or signs (the hardware does not keep them).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/common.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace kvtier {

KVTIER_HD float BitsToFloat(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

KVTIER_HD uint32_t FloatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

KVTIER_HD float HalfToFloat(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (man << 13));  // Inf / NaN
  if (exp == 0) {
    if (man == 0) return BitsToFloat(sign);
    // Subnormal: value = man * 2^-24, exact in fp32.
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return BitsToFloat(sign | ((exp + 112u) << 23) | (man << 13));
#endif
}

KVTIER_HD uint16_t FloatToHalf(float f) {
#if defined(__CUDA_ARCH__)
  if (f != f) return 0x7e00u;  // canonical NaN, as on the host
  return __half_as_ushort(__float2half_rn(f));
#else
  const uint32_t x = FloatToBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return 0x7e00u;                                 // NaN: canonical
  if (abs == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // Inf
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65536: Inf
  if (abs < 0x38800000u) {  // result is subnormal or zero: value / 2^-24, rounded to nearest even
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to zero
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
#endif
}

KVTIER_HD float Bf16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

KVTIER_HD uint16_t FloatToBf16(float f) {
#if defined(__CUDA_ARCH__)
  if (f != f) return 0x7fc0u;  // canonical NaN, as on the host
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
  const uint32_t x = FloatToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;  // NaN: canonical
  const uint32_t lsb = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7fffu + lsb) >> 16);
#endif
}

// Rounds a non-negative finite float up to the nearest fp16 value (used for scales, so that quantizing
// with the stored, rounded scale never clips). Saturates at the largest finite fp16 (65504).
KVTIER_HD uint16_t FloatToHalfRoundUp(float f) {
  if (!(f > 0.0f)) return 0;
  if (f >= 65504.0f) return 0x7bffu;
  uint16_t h = FloatToHalf(f);
  if (HalfToFloat(h) < f) ++h;  // next representable magnitude
  return h;
}

// Rounds a finite float down (toward -inf) to an fp16 value, saturating at +-65504.
KVTIER_HD uint16_t FloatToHalfRoundDown(float f) {
  if (f <= -65504.0f) return 0xfbffu;
  if (f >= 65504.0f) return 0x7bffu;
  uint16_t h = FloatToHalf(f);
  const float back = HalfToFloat(h);
  if (back > f) {
    // Step one ulp toward -inf: for positives decrement the magnitude, for negatives increment it.
    if (h == 0x0000u) return 0x8001u;
    h = (h & 0x8000u) ? static_cast<uint16_t>(h + 1u) : static_cast<uint16_t>(h - 1u);
  }
  return h;
}

}  // namespace kvtier
