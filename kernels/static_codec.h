// Per-element math of static-scale segments (kernels/static_transcode.h), shared by the CPU reference,
// the CPU fast path and the CUDA kernel: FormatTraits' encode/decode with QParams{s, 1/s, 0}, and the
// clip test. __host__ __device__.
#pragma once

#include "kernels/format.h"

namespace kvtier {

// The largest code magnitude of a static-scale format: the clip limit of x * (1/s).
template <Format F>
KVTIER_HD constexpr float StaticLimit() {
  if constexpr (F == Format::kInt8) return 127.0f;
  else if constexpr (F == Format::kFp8E4m3) return Fp8E4m3::kMaxFiniteValue;
  else if constexpr (F == Format::kFp8E5m2) return Fp8E5m2::kMaxFiniteValue;
  else return 0.0f;
}

template <Format F>
inline constexpr bool kStaticCapable = F == Format::kInt8 || F == Format::kFp8E4m3 || F == Format::kFp8E5m2;

KVTIER_HD QParams StaticParams(float scale) { return QParams{scale, InverseOrZero(scale), 0.0f}; }

// 1 when x is clipped by the static scale whose reciprocal is `inv` (NaN never is), else 0.
template <Format F>
KVTIER_HD uint32_t StaticClipped(float x, float inv) {
  return static_cast<uint32_t>(fabsf(x * inv) > StaticLimit<F>());
}

}  // namespace kvtier
