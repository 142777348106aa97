// Page-out kernel instances (quantize-gather): fp16 or bf16 sources, any destination format.
#include "kernels/cuda/transcode_device.cuh"

namespace kvtier::cuda_transcode {
namespace {

#ifndef KVTIER_TRANSCODE_OUT_MIN_CTAS
#define KVTIER_TRANSCODE_OUT_MIN_CTAS 6
#endif

template <Format S>
__global__ void __launch_bounds__(kWarpsPerCta * 32, KVTIER_TRANSCODE_OUT_MIN_CTAS) FromKernel(const Params p) {
  TranscodeWarp<Bit(S), kAllFormats & ~Bit(S)>(p);
}

}  // namespace

cudaError_t LaunchFromPassThrough(const Params& params, Path path, dim3 grid, size_t smem, cudaStream_t stream) {
  if (path == Path::kFromBf16)
    FromKernel<Format::kBf16><<<grid, kWarpsPerCta * 32, smem, stream>>>(params);
  else
    FromKernel<Format::kFp16><<<grid, kWarpsPerCta * 32, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace kvtier::cuda_transcode
