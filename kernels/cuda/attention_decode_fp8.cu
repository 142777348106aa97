// Instantiates the attention kernels for the fp8 page formats (e4m3, e5m2).
#include "kernels/cuda/attention_dispatch.h"

namespace kvtier::cuda_attn {

cudaError_t LaunchDecodeFp8(Format fk, Format fv, int head_dim, const DecodeKernelParams& p, dim3 grid,
                            cudaStream_t stream) {
  if (fk == Format::kFp8E4m3 && fv == Format::kFp8E4m3)
    return DispatchDecode<Format::kFp8E4m3, Format::kFp8E4m3>(head_dim, p, grid, stream);
  if (fk == Format::kFp8E5m2 && fv == Format::kFp8E5m2)
    return DispatchDecode<Format::kFp8E5m2, Format::kFp8E5m2>(head_dim, p, grid, stream);
  return cudaErrorNotSupported;
}

cudaError_t DecodeOccupancyFp8(Format fk, Format fv, int head_dim, const DecodeStage& s, int* ctas) {
  if (fk == Format::kFp8E4m3 && fv == Format::kFp8E4m3)
    return DispatchDecodeOccupancy<Format::kFp8E4m3, Format::kFp8E4m3>(head_dim, s, ctas);
  if (fk == Format::kFp8E5m2 && fv == Format::kFp8E5m2)
    return DispatchDecodeOccupancy<Format::kFp8E5m2, Format::kFp8E5m2>(head_dim, s, ctas);
  return cudaErrorNotSupported;
}

cudaError_t LaunchExtendFp8(Format fk, Format fv, int head_dim, const ExtendKernelParams& p, dim3 grid,
                            cudaStream_t stream) {
  if (fk == Format::kFp8E4m3 && fv == Format::kFp8E4m3)
    return DispatchExtend<Format::kFp8E4m3, Format::kFp8E4m3>(head_dim, p, grid, stream);
  if (fk == Format::kFp8E5m2 && fv == Format::kFp8E5m2)
    return DispatchExtend<Format::kFp8E5m2, Format::kFp8E5m2>(head_dim, p, grid, stream);
  return cudaErrorNotSupported;
}

}  // namespace kvtier::cuda_attn
