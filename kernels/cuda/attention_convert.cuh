// Conversion layer of the CUDA attention kernels: page codes -> fp32 values, 8 channels at a time. The
// extend kernel's shared-memory dequantization (DequantTile) uses it; the decode kernel converts codes
// straight into fp16 mma fragments instead (attention_mma.cuh), with the same tricks.
//
// A *chunk* is 8 consecutive channels of one token row (16 bytes of fp16/bf16, 8 bytes of fp8/int8,
// 4 bytes of int4). CodeChunk<F>::Raw is its storage type, and DecodeCodes<F> turns it into the 8 raw
// code values as float, WITHOUT the group parameters: fp16/bf16 values, fp8 values (before the
// per-segment scale), int8 codes (-127..127) and int4 codes (0..15). Callers apply scales where it is
// cheapest (scores, softmax weights or per channel); the values equal FormatTraits<F>::Decode exactly
// once the same scale and offset are applied.
//
// Tricks: fp8 pairs go through one cvt.rn.f16x2.e{4m3,5m2}x2 (sm_89+); int8 and int4 use the
// magic-number conversion (code bits placed in the mantissa of fp16 1024.0 with prmt / lop3, then one
// fp16x2 subtraction) instead of per-element integer-to-float casts.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/format.h"

namespace kvtier::cuda_attn {

template <Format F>
struct CodeChunk;
template <>
struct CodeChunk<Format::kFp16> {
  using Raw = uint4;
};
template <>
struct CodeChunk<Format::kBf16> {
  using Raw = uint4;
};
template <>
struct CodeChunk<Format::kFp8E4m3> {
  using Raw = uint2;
};
template <>
struct CodeChunk<Format::kFp8E5m2> {
  using Raw = uint2;
};
template <>
struct CodeChunk<Format::kInt8> {
  using Raw = uint2;
};
template <>
struct CodeChunk<Format::kInt4> {
  using Raw = uint32_t;
};
template <>
struct CodeChunk<Format::kFp4E2m1> {
  using Raw = uint32_t;
};

__device__ __forceinline__ float2 Half2Bits(uint32_t bits) {
  __half2 h;
  memcpy(&h, &bits, 4);
  return __half22float2(h);
}

__device__ __forceinline__ float2 Bf162Bits(uint32_t bits) {
  __nv_bfloat162 h;
  memcpy(&h, &bits, 4);
  return __bfloat1622float2(h);
}

template <__nv_fp8_interpretation_t kKind>
__device__ __forceinline__ float2 Fp8PairToFloat2(uint32_t two_bytes) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes), kKind);
  uint32_t bits;
  memcpy(&bits, &h, 4);
  return Half2Bits(bits);
}

// int8 bytes 0,1 (sel 0x5140) or 2,3 (sel 0x5342) of x -> two fp16 (1024 + 128 + code) -> codes.
template <uint32_t kSel>
__device__ __forceinline__ float2 Int8PairToFloat2(uint32_t x) {
  uint32_t h;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(h) : "r"(x ^ 0x80808080u), "r"(0x64646464u), "n"(kSel));
  __half2 v;
  memcpy(&v, &h, 4);
  v = __hsub2(v, __half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480)));  // 1152 = 1024 + 128
  return __half22float2(v);
}

// Nibbles (k, k+4) of x (after shifting by 4k) -> two fp16 (1024 + code) -> codes.
__device__ __forceinline__ float2 Int4PairToFloat2(uint32_t x) {
  uint32_t h;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(h) : "r"(x), "r"(0x000f000fu), "r"(0x64006400u));  // (a & b) | c
  __half2 v;
  memcpy(&v, &h, 4);
  v = __hsub2(v, __half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400)));
  return __half22float2(v);
}

template <Format F>
__device__ __forceinline__ void DecodeCodes(const typename CodeChunk<F>::Raw& r, float (&out)[8]) {
  if constexpr (F == Format::kFp16 || F == Format::kBf16) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = F == Format::kFp16 ? Half2Bits(w[i]) : Bf162Bits(w[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  } else if constexpr (F == Format::kFp8E4m3 || F == Format::kFp8E5m2) {
    constexpr __nv_fp8_interpretation_t kKind = F == Format::kFp8E4m3 ? __NV_E4M3 : __NV_E5M2;
    const uint32_t w[2] = {r.x, r.y};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float2 lo = Fp8PairToFloat2<kKind>(w[i] & 0xffffu);
      const float2 hi = Fp8PairToFloat2<kKind>(w[i] >> 16);
      out[4 * i] = lo.x;
      out[4 * i + 1] = lo.y;
      out[4 * i + 2] = hi.x;
      out[4 * i + 3] = hi.y;
    }
  } else if constexpr (F == Format::kInt8) {
    const uint32_t w[2] = {r.x, r.y};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float2 lo = Int8PairToFloat2<0x5140>(w[i]);
      const float2 hi = Int8PairToFloat2<0x5342>(w[i]);
      out[4 * i] = lo.x;
      out[4 * i + 1] = lo.y;
      out[4 * i + 2] = hi.x;
      out[4 * i + 3] = hi.y;
    }
  } else if constexpr (F == Format::kFp4E2m1) {
#pragma unroll
    for (int e = 0; e < 8; ++e) out[e] = Fp4E2m1::Decode(r >> (4 * e));  // E2M1 values, group scales apart
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = Int4PairToFloat2(r >> (4 * k));
      out[k] = f.x;
      out[k + 4] = f.y;
    }
  }
}

// Activations (q in, out out): fp16 / bf16 / fp32 chosen at run time (only touched once per head).
__device__ __forceinline__ float LoadActDevice(const void* base, int dtype, int64_t i) {
  if (dtype == 0) return __half2float(static_cast<const __half*>(base)[i]);
  if (dtype == 1) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

__device__ __forceinline__ void StoreActDevice(void* base, int dtype, int64_t i, float v) {
  if (dtype == 0) {
    static_cast<__half*>(base)[i] = __float2half_rn(v);
  } else if (dtype == 1) {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(base)[i] = v;
  }
}

}  // namespace kvtier::cuda_attn
