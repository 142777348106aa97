// Builds without CUDA: the CUDA device backend and pinned host memory are not available; kvtierd serves
// from the host device.
#include "absl/status/status.h"
#include "tiering/cuda_device_backend.h"
#include "tiering/pinned_allocator.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<DeviceBackend>> MakeCudaDeviceBackend(int, CudaDeviceBackendOptions) {
  return absl::UnimplementedError("built without CUDA");
}

absl::StatusOr<std::unique_ptr<HostAllocator>> MakePinnedHostAllocator(uint64_t) {
  return absl::UnimplementedError("built without CUDA");
}

}  // namespace kvtier
