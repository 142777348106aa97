// Small definitions shared by every kernels/ file: the host/device qualifier and the checked-cast
// helpers. kernels/ depends on nothing outside the C++ standard library and (optionally) CUDA, so that
// it builds on machines that lack the daemon's libraries.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KVTIER_HD __host__ __device__ __forceinline__
#define KVTIER_DEVICE __device__ __forceinline__
#else
#define KVTIER_HD inline
#define KVTIER_DEVICE inline
#endif

namespace kvtier {

// K or V half of an attention layer's cache.
enum class Operand : uint8_t { kKey = 0, kValue = 1 };

inline constexpr const char* OperandName(Operand op) { return op == Operand::kKey ? "K" : "V"; }

}  // namespace kvtier
