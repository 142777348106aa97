// ProbeGpu for builds without CUDA.
#include "kernels/device.h"

namespace kvtier {

const GpuInfo& ProbeGpu() {
  static const GpuInfo info{false, -1, "", 0, 0, "kvtier was built without CUDA"};
  return info;
}

}  // namespace kvtier
