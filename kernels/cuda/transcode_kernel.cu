// The CUDA transcode launcher: grid shape and the choice of kernel instance. The device code is in
// transcode_device.cuh; the instances are compiled in transcode_out.cu, transcode_in.cu and
// transcode_generic.cu.
#include <cuda_runtime.h>

#include "kernels/cuda/transcode_kernel.h"

namespace kvtier::cuda_transcode {

cudaError_t LaunchTranscode(const Params& params, Path path, cudaStream_t stream) {
  // Pages along x: CTAs launched together work on the same few table entries, which the host sorted by
  // codec pair, so the warps resident on an SM run the same code path.
  const int warps = path == Path::kGeneric ? 1 : kWarpsPerCta;
  const uint32_t chunks = (params.num_segments + warps - 1) / warps;
  const uint32_t y = chunks < 65535 ? chunks : 65535;
  const dim3 grid(params.num_pages, y, (chunks + y - 1) / y);
  const size_t smem = SharedBytes(path, params);
  switch (path) {
    case Path::kFromFp16:
    case Path::kFromBf16:
      return LaunchFromPassThrough(params, path, grid, smem, stream);
    case Path::kToFp16:
    case Path::kToBf16:
      return LaunchToPassThrough(params, path, grid, smem, stream);
    case Path::kGeneric:
      break;
  }
  return LaunchGeneric(params, grid, smem, stream);
}

}  // namespace kvtier::cuda_transcode
