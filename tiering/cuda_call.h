// The one checked wrapper for CUDA calls in tiering/: runtime (cudaError_t) and driver (CUresult) errors
// become absl::Status, via kernels/' CudaStatus and tiering/kernel_status.h. Only CUDA-built sources
// include this header.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_check.h"
#include "tiering/kernel_status.h"

namespace kvtier {

inline absl::Status CudaCall(cudaError_t err, const char* what) { return ToStatus(CudaStatus(err, what)); }

// Driver results; the message comes from cuGetErrorString when the driver could be reached.
absl::Status DriverCall(CUresult res, const char* what);

}  // namespace kvtier

// Evaluates a CUDA runtime call and returns an absl::Status from the enclosing function on failure.
#define KVTIER_RETURN_IF_CUDA_ERROR(call)                                    \
  do {                                                                       \
    ::absl::Status _kvtier_cuda_call_st = ::kvtier::CudaCall((call), #call); \
    if (!_kvtier_cuda_call_st.ok()) return _kvtier_cuda_call_st;             \
  } while (0)

// The same for driver API calls (through CudaDriver(), tiering/cuda_driver.h).
#define KVTIER_RETURN_IF_DRIVER_ERROR(call)                                   \
  do {                                                                        \
    ::absl::Status _kvtier_drv_call_st = ::kvtier::DriverCall((call), #call); \
    if (!_kvtier_drv_call_st.ok()) return _kvtier_drv_call_st;                \
  } while (0)

// Returns an absl::Status expression from the enclosing function when it is not OK.
#define KVTIER_RETURN_IF_ERROR(expr)         \
  do {                                       \
    ::absl::Status _kvtier_st = (expr);      \
    if (!_kvtier_st.ok()) return _kvtier_st; \
  } while (0)
