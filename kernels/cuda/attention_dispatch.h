// Dispatch table of the CUDA attention kernels: the single host boundary where runtime (K format,
// V format, head_dim, heads per CTA) become template parameters. Each format family is compiled in its
// own translation unit (attention_decode_{f16,fp8,int}.cu), so the families compile in parallel and only
// the combinations listed here are instantiated:
//   fp16/fp16, bf16/bf16, fp8_e4m3/fp8_e4m3, fp8_e5m2/fp8_e5m2, int8/int8, int4/int4, int8/int4,
//   fp4_e2m1/fp4_e2m1 (attention_decode_fp4.cu)
// for head_dim 64, 96, 128, 256.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_extend.cuh"
#include "kernels/format.h"

namespace kvtier::cuda_attn {

// Each returns cudaErrorNotSupported when the family lacks (fk, fv, head_dim).
cudaError_t LaunchDecodeF16(Format fk, Format fv, int head_dim, const DecodeKernelParams& p, dim3 grid,
                            cudaStream_t stream);
cudaError_t LaunchDecodeFp8(Format fk, Format fv, int head_dim, const DecodeKernelParams& p, dim3 grid,
                            cudaStream_t stream);
cudaError_t LaunchDecodeInt(Format fk, Format fv, int head_dim, const DecodeKernelParams& p, dim3 grid,
                            cudaStream_t stream);
cudaError_t LaunchDecodeFp4(Format fk, Format fv, int head_dim, const DecodeKernelParams& p, dim3 grid,
                            cudaStream_t stream);

// Resident CTAs per SM of the decode kernel for (fk, fv, head_dim) with the warp stage layout `s`.
cudaError_t DecodeOccupancyF16(Format fk, Format fv, int head_dim, const DecodeStage& s, int* ctas);
cudaError_t DecodeOccupancyFp8(Format fk, Format fv, int head_dim, const DecodeStage& s, int* ctas);
cudaError_t DecodeOccupancyInt(Format fk, Format fv, int head_dim, const DecodeStage& s, int* ctas);
cudaError_t DecodeOccupancyFp4(Format fk, Format fv, int head_dim, const DecodeStage& s, int* ctas);

cudaError_t LaunchExtendF16(Format fk, Format fv, int head_dim, const ExtendKernelParams& p, dim3 grid,
                            cudaStream_t stream);
cudaError_t LaunchExtendFp8(Format fk, Format fv, int head_dim, const ExtendKernelParams& p, dim3 grid,
                            cudaStream_t stream);
cudaError_t LaunchExtendInt(Format fk, Format fv, int head_dim, const ExtendKernelParams& p, dim3 grid,
                            cudaStream_t stream);
cudaError_t LaunchExtendFp4(Format fk, Format fv, int head_dim, const ExtendKernelParams& p, dim3 grid,
                            cudaStream_t stream);

// head_dim switch for one (FK, FV) pair.
template <Format FK, Format FV>
cudaError_t DispatchDecode(int head_dim, const DecodeKernelParams& p, dim3 grid, cudaStream_t stream) {
  switch (head_dim) {
    case 64:
      return LaunchPagedDecode<64, FK, FV>(p, grid, stream);
    case 96:
      return LaunchPagedDecode<96, FK, FV>(p, grid, stream);
    case 128:
      return LaunchPagedDecode<128, FK, FV>(p, grid, stream);
    case 256:
      return LaunchPagedDecode<256, FK, FV>(p, grid, stream);
    default:
      return cudaErrorNotSupported;
  }
}

template <Format FK, Format FV>
cudaError_t DispatchDecodeOccupancy(int head_dim, const DecodeStage& s, int* ctas) {
  switch (head_dim) {
    case 64:
      return OccupancyPagedDecode<64, FK, FV>(s, ctas);
    case 96:
      return OccupancyPagedDecode<96, FK, FV>(s, ctas);
    case 128:
      return OccupancyPagedDecode<128, FK, FV>(s, ctas);
    case 256:
      return OccupancyPagedDecode<256, FK, FV>(s, ctas);
    default:
      return cudaErrorNotSupported;
  }
}

template <Format FK, Format FV>
cudaError_t DispatchExtend(int head_dim, const ExtendKernelParams& p, dim3 grid, cudaStream_t stream) {
  switch (head_dim) {
    case 64:
      return LaunchPagedExtend<64, FK, FV>(p, grid, stream);
    case 96:
      return LaunchPagedExtend<96, FK, FV>(p, grid, stream);
    case 128:
      return LaunchPagedExtend<128, FK, FV>(p, grid, stream);
    case 256:
      return LaunchPagedExtend<256, FK, FV>(p, grid, stream);
    default:
      return cudaErrorNotSupported;
  }
}

}  // namespace kvtier::cuda_attn
