// Instantiates the attention kernels for fp4_e2m1 pages (K and V both fp4_e2m1).
#include "kernels/cuda/attention_dispatch.h"

namespace kvtier::cuda_attn {

cudaError_t LaunchDecodeFp4(Format fk, Format fv, int head_dim, const DecodeKernelParams& p, dim3 grid,
                            cudaStream_t stream) {
  if (fk == Format::kFp4E2m1 && fv == Format::kFp4E2m1)
    return DispatchDecode<Format::kFp4E2m1, Format::kFp4E2m1>(head_dim, p, grid, stream);
  return cudaErrorNotSupported;
}

cudaError_t DecodeOccupancyFp4(Format fk, Format fv, int head_dim, const DecodeStage& s, int* ctas) {
  if (fk == Format::kFp4E2m1 && fv == Format::kFp4E2m1)
    return DispatchDecodeOccupancy<Format::kFp4E2m1, Format::kFp4E2m1>(head_dim, s, ctas);
  return cudaErrorNotSupported;
}

cudaError_t LaunchExtendFp4(Format fk, Format fv, int head_dim, const ExtendKernelParams& p, dim3 grid,
                            cudaStream_t stream) {
  if (fk == Format::kFp4E2m1 && fv == Format::kFp4E2m1)
    return DispatchExtend<Format::kFp4E2m1, Format::kFp4E2m1>(head_dim, p, grid, stream);
  return cudaErrorNotSupported;
}

}  // namespace kvtier::cuda_attn
