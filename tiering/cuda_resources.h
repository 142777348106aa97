// RAII owners for the CUDA runtime resources of tiering/: device buffers, pinned host buffers, streams
// and events. Each frees its resource in its destructor (errors there are ignored: nothing can be done
// about them); creation goes through the checked wrapper of tiering/cuda_call.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "tiering/cuda_call.h"

namespace kvtier {

struct DeviceFree {
  void operator()(uint8_t* p) const { IgnoreCudaError(cudaFree(p)); }
};
struct PinnedFree {
  void operator()(uint8_t* p) const { IgnoreCudaError(cudaFreeHost(p)); }
};
struct StreamDestroy {
  void operator()(CUstream_st* s) const { IgnoreCudaError(cudaStreamDestroy(s)); }
};

using DeviceBytes = std::unique_ptr<uint8_t, DeviceFree>;
using PinnedBytes = std::unique_ptr<uint8_t, PinnedFree>;
struct EventDestroy {
  void operator()(CUevent_st* e) const { IgnoreCudaError(cudaEventDestroy(e)); }
};

using CudaStream = std::unique_ptr<CUstream_st, StreamDestroy>;
using CudaEvent = std::unique_ptr<CUevent_st, EventDestroy>;

inline absl::StatusOr<DeviceBytes> AllocateDevice(uint64_t bytes) {
  void* p = nullptr;
  KVTIER_RETURN_IF_CUDA_ERROR(cudaMalloc(&p, bytes));
  return DeviceBytes(static_cast<uint8_t*>(p));
}

inline absl::StatusOr<PinnedBytes> AllocatePinned(uint64_t bytes) {
  void* p = nullptr;
  KVTIER_RETURN_IF_CUDA_ERROR(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
  return PinnedBytes(static_cast<uint8_t*>(p));
}

// A non-blocking stream (does not synchronize with the legacy default stream).
inline absl::StatusOr<CudaStream> CreateStream() {
  cudaStream_t s = nullptr;
  KVTIER_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return CudaStream(s);
}

// An event for ordering only (no timing).
inline absl::StatusOr<CudaEvent> CreateEvent() {
  cudaEvent_t e = nullptr;
  KVTIER_RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return CudaEvent(e);
}

}  // namespace kvtier
