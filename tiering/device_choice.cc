// ChooseDevice (tiering/cuda_device_backend.h): in every build, so that kvtierd has one code path.
#include "absl/strings/str_cat.h"
#include "kernels/device.h"
#include "tiering/cuda_device_backend.h"
#include "tiering/pinned_allocator.h"

namespace kvtier {

DeviceChoice ChooseDevice(int host_threads) {
  DeviceChoice c;
  const GpuInfo& gpu = ProbeGpu();
  if (!gpu.available) {
    c.why = absl::StrCat("device=host reason=\"", gpu.why_not, "\"");
  } else {
    auto cuda = MakeCudaDeviceBackend(gpu.device);
    auto pinned = cuda.ok() ? MakePinnedHostAllocator() : absl::StatusOr<std::unique_ptr<HostAllocator>>(nullptr);
    if (cuda.ok() && pinned.ok()) {
      c.device = std::move(*cuda);
      c.host_allocator = std::move(*pinned);
      c.why = absl::StrCat("device=cuda backend=\"", c.device->name(), "\" host_memory=pinned");
      return c;
    }
    c.why = absl::StrCat("device=host gpu=\"", gpu.name, "\" reason=\"",
                         (cuda.ok() ? pinned.status() : cuda.status()).ToString(), "\"");
  }
  c.device = MakeHostDeviceBackend(host_threads);
  c.host_allocator = MakeAlignedHostAllocator();
  return c;
}

}  // namespace kvtier
