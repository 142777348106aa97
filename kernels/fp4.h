// FP4 (OCP MX E2M1) element codec and the E4M3 "round up" scale encoder used by the fp4_e2m1 block format
// (NVFP4 arrangement: 4-bit E2M1 values, one E4M3 scale per 16 values, one fp32 scale per segment).
// Identical on host and device (__host__ __device__); software only (Hopper has no E2M1 conversion).
//
// E2M1: 1 sign bit, 2 exponent bits (bias 1), 1 mantissa bit; no Inf, no NaN. Magnitude codes 0..7 are
//   0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign (code 8 is -0).
// Encode(y):
//   - rounds |y| to the nearest magnitude, ties to the EVEN code (0.25 -> 0, 0.75 -> 1, 1.25 -> 1,
//     1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4);
//   - SATURATES: |y| > 5 (and +-Inf) becomes +-6;
//   - keeps the sign of zero and of values that round to zero (-0.1 -> code 8, "-0");
//   - NaN becomes +0 (code 0): E2M1 has no NaN. (The block codec maps NaN elements to 0 before this.)
// These are the codes of ml_dtypes.float4_e2m1fn for every finite input within the range (tested:
// tests/kernels/fp4_test.cc, vectors in tests/kernels/data/fp4_ml_dtypes.txt); ml_dtypes saturates too.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common.h"
#include "kernels/fp8.h"
#include "kernels/half.h"

namespace kvtier {

struct Fp4E2m1 {
  static constexpr float kMaxFinite = 6.0f;

  // Value of a code (bit 3 sign, bits 0..2 magnitude); bits above 3 are ignored. Exact in fp32.
  static KVTIER_HD float Decode(uint32_t code) {
    // Magnitude m (0..7): (m >> 1) is the exponent field e, (m & 1) the mantissa bit; e == 0 is
    // subnormal (0 or 0.5), otherwise (2 + man) * 2^(e - 2).
    const uint32_t m = code & 7u;
    const uint32_t e = m >> 1;
    // Built on the bit pattern: normal values are 2^(e-1) * (1 + man/2) -> fp32 exponent e - 1 + 127.
    const uint32_t normal_bits = ((e + 126u) << 23) | ((m & 1u) << 22);
    const uint32_t sub_bits = (m & 1u) ? 0x3f000000u : 0u;  // 0.5 or 0
    const uint32_t bits = (e != 0 ? normal_bits : sub_bits) | ((code & 8u) << 28);
    return BitsToFloat(bits);
  }

  // Decoding for kernels that compute in fp16 (attention): the 8 codes of a 32-bit word (code j in bits
  // 4j..4j+3, the page's nibble order) as 4 half2 bit patterns holding value * 2^-14, i.e.
  //   Decode(code 2i)   == half(h2[i] & 0xffff) * 16384,   Decode(code 2i+1) == half(h2[i] >> 16) * 16384.
  // Exact: each E2M1 value times 2^-14 is an fp16 number (a subnormal for |value| < 1; needs no flush to
  // zero, which fp16 arithmetic on NVIDIA GPUs never does). Sign, exponent and mantissa bits only move:
  // 4 AND/SHIFT/OR per pair (LOP3s on the device). Multiply by 16384 * S (S the group scale) afterwards.
  static KVTIER_HD void DecodeWordToHalf2Scaled(uint32_t w, uint32_t (&h2)[4]) {
    for (int i = 0; i < 4; ++i) {
      const uint32_t x = w >> (8 * i);
      h2[i] = ((x & 0x8u) << 12) | ((x & 0x7u) << 9) | ((x & 0x80u) << 24) | ((x & 0x70u) << 21);
    }
  }

  // Code of y, round to nearest even, saturating, NaN -> +0 (see the header comment). Branch-free.
  static KVTIER_HD uint32_t Encode(float y) {
    const uint32_t bits = FloatToBits(y);
    const uint32_t abs_bits = bits & 0x7fffffffu;
    const uint32_t not_nan = static_cast<uint32_t>(abs_bits <= 0x7f800000u);
    // |y| >= 1: round the fp32 pattern to 1 mantissa bit (ties to even), rebias exponent 127 -> 1.
    // (abs_bits >> 22) of 1.0 is 254 = code 2 + 252.
    const uint32_t clamped = abs_bits < 0x40c00000u ? abs_bits : 0x40c00000u;  // min(|y|, 6), Inf too
    const uint32_t normal = ((clamped + 0x1fffffu + ((clamped >> 22) & 1u)) >> 22) - 252u;
    // |y| < 1: multiples of 0.5, round to nearest even of 2|y| in [0, 2] (0.25 -> 0, 0.75 -> 2 = 1.0).
    const float two_a = BitsToFloat(abs_bits < 0x3f800000u ? abs_bits : 0u) * 2.0f;
    const uint32_t sub = static_cast<uint32_t>(rintf(two_a));  // round to nearest even (exact steps)
    const uint32_t mag = abs_bits >= 0x3f800000u ? normal : sub;
    return (((bits >> 28) & 8u) | mag) * not_nan;
  }

};

// E4M3 code (positive, 0x00..0x7e) of the smallest E4M3 value >= t, for 0 <= t <= 448 (larger t and NaN
// give 448, the largest finite value). Used for fp4 group scales: rounding UP means that the scaled
// group maximum never exceeds E2M1's largest value 6, so no finite value is clipped by the scale.
KVTIER_HD uint32_t E4m3CodeRoundUp(float t) {
  if (!(t < 448.0f)) return 0x7eu;
  const uint32_t c = Fp8E4m3::Encode(t);  // nearest, ties to even: at most one step below t
  return Fp8E4m3::Decode(static_cast<uint8_t>(c)) < t ? c + 1u : c;
}

}  // namespace kvtier
