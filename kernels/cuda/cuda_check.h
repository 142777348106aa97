// The one checked wrapper for CUDA runtime calls in kernels/: turns a cudaError_t into a KernelStatus.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/status.h"

namespace kvtier {

// A failed runtime call also leaves its error in the thread's last-error slot, where the check after a
// later kernel launch (cudaGetLastError) would find it and blame that launch. Every failure handled here
// is consumed from the slot; IgnoreCudaError does the same for calls whose failure nothing can act on.
inline void IgnoreCudaError(cudaError_t err) {
  if (err != cudaSuccess) (void)cudaGetLastError();
}

inline KernelStatus CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return KernelStatus::Ok();
  IgnoreCudaError(err);
  return {KernelCode::kInternal, std::string(what) + ": " + cudaGetErrorName(err) + " " + cudaGetErrorString(err)};
}

}  // namespace kvtier

// Evaluates a CUDA runtime call and returns a KernelStatus from the enclosing function on failure.
#define KVTIER_CUDA_RETURN_IF_ERROR(call)                                         \
  do {                                                                            \
    ::kvtier::KernelStatus _kvtier_cuda_st = ::kvtier::CudaStatus((call), #call); \
    if (!_kvtier_cuda_st.ok()) return _kvtier_cuda_st;                            \
  } while (0)
