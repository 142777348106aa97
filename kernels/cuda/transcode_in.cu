// Page-in kernel instances (dequantize-scatter): any source format, fp16 or bf16 destinations.
#include "kernels/cuda/transcode_device.cuh"

namespace kvtier::cuda_transcode {
namespace {

#ifndef KVTIER_TRANSCODE_IN_MIN_CTAS
#define KVTIER_TRANSCODE_IN_MIN_CTAS 8
#endif

template <Format D>
__global__ void __launch_bounds__(kWarpsPerCta * 32, KVTIER_TRANSCODE_IN_MIN_CTAS) ToKernel(const Params p) {
  TranscodeWarp<kAllFormats & ~Bit(D), Bit(D)>(p);
}

}  // namespace

cudaError_t LaunchToPassThrough(const Params& params, Path path, dim3 grid, size_t smem, cudaStream_t stream) {
  if (path == Path::kToBf16)
    ToKernel<Format::kBf16><<<grid, kWarpsPerCta * 32, smem, stream>>>(params);
  else
    ToKernel<Format::kFp16><<<grid, kWarpsPerCta * 32, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace kvtier::cuda_transcode
