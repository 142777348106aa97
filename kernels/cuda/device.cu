#include <mutex>

#include "kernels/cuda/cuda_check.h"
#include "kernels/device.h"

namespace kvtier {

const GpuInfo& ProbeGpu() {
  static GpuInfo info;
  static std::once_flag once;
  std::call_once(once, [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      info.why_not =
          err != cudaSuccess ? std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err) : "no CUDA device visible";
      IgnoreCudaError(err);
      return;
    }
    cudaDeviceProp prop{};
    if (const cudaError_t e = cudaGetDeviceProperties(&prop, 0); e != cudaSuccess) {
      IgnoreCudaError(e);
      info.why_not = "cudaGetDeviceProperties failed";
      return;
    }
    info.available = true;
    info.device = 0;
    info.name = prop.name;
    info.sm_count = prop.multiProcessorCount;
    info.compute_capability = prop.major * 10 + prop.minor;
  });
  return info;
}

}  // namespace kvtier
