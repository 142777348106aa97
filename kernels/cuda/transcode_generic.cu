// Generic kernel instance: any source and destination formats (quantized to quantized, mixed pages).
// One warp per CTA: the segment is decoded into shared memory (up to 64 KiB for 64 x 256 segments).
#include "kernels/cuda/transcode_device.cuh"

namespace kvtier::cuda_transcode {
namespace {

__global__ void __launch_bounds__(32) GenericKernel(const Params p) { TranscodeWarpGeneric(p); }

}  // namespace

cudaError_t LaunchGeneric(const Params& params, dim3 grid, size_t smem, cudaStream_t stream) {
  if (smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(GenericKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  GenericKernel<<<grid, 32, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace kvtier::cuda_transcode
