// Tensor-core building blocks of the CUDA attention kernels: ldmatrix / mma.sync m16n8k16 wrappers,
// fp32 -> fp16/bf16 pair packing, and the dequantization of a staged raw tile into the padded fp16 tile
// that the mma kernels read (quantized page formats only; 16-bit pages are read in place).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention_convert.cuh"
#include "kernels/cuda/attention_tile.cuh"

namespace kvtier::cuda_attn {

template <Format F>
inline constexpr bool kIs16Bit = F == Format::kFp16 || F == Format::kBf16;

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void LdMatrixX4T(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

template <bool kBf16>
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <bool kBf16>
__device__ __forceinline__ uint32_t PackPair(float x, float y) {
  uint32_t r;
  if constexpr (kBf16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    memcpy(&r, &h, 4);
  } else {
    const __half2 h = __floats2half2_rn(x, y);
    memcpy(&r, &h, 4);
  }
  return r;
}

// Two E4M3 bytes (bits 0..15 of w) -> fp16x2 (exact: E4M3 values are fp16 values).
__device__ __forceinline__ uint32_t E4m3x2ToHalf2(uint32_t w) {
  const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xffffu), __NV_E4M3);
  uint32_t bits;
  memcpy(&bits, &r, 4);
  return bits;
}

// Dequantizes the staged raw tile into the padded fp16 tile: K with its per-channel scale/offset or
// per-segment scale, V with its per-token (group) scale/offset or per-segment scale. V rows at or past
// `valid` (tokens past the sequence's end) become zeros.
template <int D, Format FK, Format FV, int kThreads>
__device__ __forceinline__ void DequantTile(const TileLayout& L, int bs, int v_group, const uint8_t* st, int valid,
                                            uint8_t* mma) {
  constexpr int kChunks = D / 8;
  constexpr int kPitch = D * 2 + 16;
  for (int i = threadIdx.x; i < 2 * kAttnTile * kChunks; i += kThreads) {
    const bool is_v = i >= kAttnTile * kChunks;
    const int c = (is_v ? i - kAttnTile * kChunks : i) % kChunks, t = (is_v ? i - kAttnTile * kChunks : i) / kChunks;
    const int jb = t / bs, tb = t % bs;
    float v[8];
    if (!is_v) {
      if constexpr (!kIs16Bit<FK>) {
        DecodeCodes<FK>(
            *reinterpret_cast<const typename CodeChunk<FK>::Raw*>(st + t * L.k_pitch + c * FormatTraits<FK>::kBits), v);
        const uint8_t* kp = st + L.kp_off + jb * L.k_seg_param_bytes;
        const uint16_t* kp16 = reinterpret_cast<const uint16_t*>(kp);
        float fp4_s[8] = {};
        if constexpr (FK == Format::kFp4E2m1) {  // E4M3 byte of (16-token group, channel), times G
          const float seg = *reinterpret_cast<const float*>(kp + (bs / 16) * D);
#pragma unroll
          for (int e = 0; e < 8; ++e)
            fp4_s[e] = __half2float(__ushort_as_half(static_cast<uint16_t>(
                           E4m3x2ToHalf2(kp[(tb / 16) * D + c * 8 + e]) & 0xffffu))) * seg;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int ch = c * 8 + e;
          if constexpr (FK == Format::kFp4E2m1) v[e] *= fp4_s[e];
          if constexpr (FK == Format::kInt8) v[e] *= __half2float(__ushort_as_half(kp16[ch]));
          if constexpr (FK == Format::kInt4)
            v[e] = fmaf(v[e], __half2float(__ushort_as_half(kp16[2 * ch])),
                        __half2float(__ushort_as_half(kp16[2 * ch + 1])));
          if constexpr (FK == Format::kFp8E4m3 || FK == Format::kFp8E5m2) v[e] *= *reinterpret_cast<const float*>(kp);
        }
      }
    } else {
      if constexpr (!kIs16Bit<FV>) {
        DecodeCodes<FV>(*reinterpret_cast<const typename CodeChunk<FV>::Raw*>(st + L.v_off + t * L.v_pitch +
                                                                              c * FormatTraits<FV>::kBits),
                        v);
        const uint8_t* vp = st + L.vp_off + jb * L.v_seg_param_bytes;
        const uint16_t* vp16 = reinterpret_cast<const uint16_t*>(vp);
        const int grp = tb * (D / v_group) + c * 8 / v_group;
        float s = 1.0f, z = 0.0f;
        if constexpr (FV == Format::kInt8) s = __half2float(__ushort_as_half(vp16[grp]));
        if constexpr (FV == Format::kInt4) {
          s = __half2float(__ushort_as_half(vp16[2 * grp]));
          z = __half2float(__ushort_as_half(vp16[2 * grp + 1]));
        }
        if constexpr (FV == Format::kFp8E4m3 || FV == Format::kFp8E5m2) s = *reinterpret_cast<const float*>(vp);
        if constexpr (FV == Format::kFp4E2m1)  // E4M3 byte of (token, 16-channel group), times G
          s = __half2float(__ushort_as_half(static_cast<uint16_t>(E4m3x2ToHalf2(vp[grp]) & 0xffffu))) *
              *reinterpret_cast<const float*>(vp + bs * (D / 16));
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = t < valid ? fmaf(v[e], s, z) : 0.0f;
      }
    }
    if ((!is_v && !kIs16Bit<FK>) || (is_v && !kIs16Bit<FV>)) {
      uint4 w;
      w.x = PackPair<false>(v[0], v[1]);
      w.y = PackPair<false>(v[2], v[3]);
      w.z = PackPair<false>(v[4], v[5]);
      w.w = PackPair<false>(v[6], v[7]);
      *reinterpret_cast<uint4*>(mma + (is_v ? kAttnTile * kPitch : 0) + t * kPitch + c * 16) = w;
    }
  }
}

// ---- Register-level dequantization for the decode kernel's mma fragments (quantized formats) ----
//
// K (B operand of S = Q K^T, n = token, k = channel): each lane reads 8 consecutive codes of its token
// row per pair of k-steps and converts them straight into b0/b1 without a shared-memory round trip. The
// channel -> k-slot assignment this implies is KChannel(); Q's A fragments are built with the same map,
// so the dot products are unchanged. V (B operand of O += P V, k = token, n = channel): each lane reads
// the codes of 4 consecutive channels for each of its 2 + 2 tokens (a word for 8-bit codes, transposed
// with prmt; 16 bits for int4, two tokens merged into one word); the channel of n-tile column n is
// VChannel(), used again when the output is stored.

template <Format F>
inline constexpr bool kIsFp8 = F == Format::kFp8E4m3 || F == Format::kFp8E5m2;
template <Format F>
inline constexpr bool kIsFp4 = F == Format::kFp4E2m1;
// 4-bit formats: a lane's fragment pairs are nibbles (k, k + 4) of a 32-bit word.
template <Format F>
inline constexpr bool kIsNibble = F == Format::kInt4 || F == Format::kFp4E2m1;

// Channel of (k-step ks, lane column t4, fragment element e in 0..3: b0 = e 0,1, b1 = e 2,3).
template <Format F>
__device__ __forceinline__ int KChannel(int ks, int t4, int e) {
  if constexpr (kIs16Bit<F>) {
    return ks * 16 + 2 * t4 + (e % 2) + 8 * (e / 2);
  } else if constexpr (kIsNibble<F>) {
    return 32 * (ks / 2) + 8 * t4 + 2 * (ks % 2) + (e / 2) + 4 * (e % 2);
  } else {
    return 32 * (ks / 2) + 8 * t4 + 4 * (ks % 2) + e;
  }
}

// Channel of output n-tile nt, column n (0..7).
template <Format F>
__device__ __forceinline__ int VChannel(int nt, int n) {
  if constexpr (kIs16Bit<F>) {
    return nt * 8 + n;
  } else {
    return 32 * (nt / 4) + 4 * n + nt % 4;
  }
}

__device__ __forceinline__ uint32_t Prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

__device__ __forceinline__ uint32_t HSub2(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
__device__ __forceinline__ uint32_t HMul2(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
__device__ __forceinline__ uint32_t HFma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

// Two 8-bit codes -> fp16x2 code values. `w` holds them in bytes (0,1) (kHi false) or (2,3) (kHi true).
template <Format F, bool kHi>
__device__ __forceinline__ uint32_t Codes8ToHalf2(uint32_t w) {
  if constexpr (F == Format::kInt8) {
    const uint32_t h = Prmt(w ^ 0x80808080u, 0x64646464u, kHi ? 0x5342u : 0x5140u);
    return HSub2(h, 0x64806480u);  // - (1024 + 128)
  } else {
    constexpr __nv_fp8_interpretation_t kKind = F == Format::kFp8E4m3 ? __NV_E4M3 : __NV_E5M2;
    const __half2_raw r =
        __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(kHi ? (w >> 16) : (w & 0xffffu)), kKind);
    uint32_t bits;
    memcpy(&bits, &r, 4);
    return bits;
  }
}

// Nibbles (k, k + 4) of x -> fp16x2 code values.
__device__ __forceinline__ uint32_t Nibbles4ToHalf2(uint32_t x, int k) {
  uint32_t h;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(h) : "r"(x >> (4 * k)), "r"(0x000f000fu), "r"(0x64006400u));
  return HSub2(h, 0x64006400u);
}

// E2M1 nibbles (k, k + 4) of x -> fp16x2 holding value * 2^-14 (exact; fp4.h DecodeWordToHalf2Scaled
// with this kernel's pairing): magnitude bits to fp16 bits 9..11, sign to bit 15.
__device__ __forceinline__ uint32_t Fp4Nibbles4ToHalf2Scaled(uint32_t x, int k) {
  const uint32_t y = x >> (4 * k);
  return ((y << 9) & 0x0e000e00u) | ((y << 12) & 0x80008000u);
}

// Raw codes a lane reads per token row and pair of k-steps (8 codes).
template <Format F>
using KRaw8 = std::conditional_t<kIsNibble<F>, uint32_t, uint2>;

// b0/b1 code values of k-step 2 * kp + hh from the 8 codes of pair kp.
template <Format F>
__device__ __forceinline__ void KCodes(const KRaw8<F>& raw, int hh, uint32_t& b0, uint32_t& b1) {
  if constexpr (F == Format::kInt4) {
    b0 = Nibbles4ToHalf2(raw, 2 * hh);
    b1 = Nibbles4ToHalf2(raw, 2 * hh + 1);
  } else if constexpr (F == Format::kFp4E2m1) {
    b0 = Fp4Nibbles4ToHalf2Scaled(raw, 2 * hh);
    b1 = Fp4Nibbles4ToHalf2Scaled(raw, 2 * hh + 1);
  } else {
    const uint32_t w = hh ? raw.y : raw.x;
    b0 = Codes8ToHalf2<F, false>(w);
    b1 = Codes8ToHalf2<F, true>(w);
  }
}

}  // namespace kvtier::cuda_attn
