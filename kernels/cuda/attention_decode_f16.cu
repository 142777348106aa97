// Instantiates the attention kernels for the 16-bit page formats (fp16, bf16).
#include "kernels/cuda/attention_dispatch.h"

namespace kvtier::cuda_attn {

cudaError_t LaunchDecodeF16(Format fk, Format fv, int head_dim, const DecodeKernelParams& p, dim3 grid,
                            cudaStream_t stream) {
  if (fk == Format::kFp16 && fv == Format::kFp16)
    return DispatchDecode<Format::kFp16, Format::kFp16>(head_dim, p, grid, stream);
  if (fk == Format::kBf16 && fv == Format::kBf16)
    return DispatchDecode<Format::kBf16, Format::kBf16>(head_dim, p, grid, stream);
  return cudaErrorNotSupported;
}

cudaError_t DecodeOccupancyF16(Format fk, Format fv, int head_dim, const DecodeStage& s, int* ctas) {
  if (fk == Format::kFp16 && fv == Format::kFp16)
    return DispatchDecodeOccupancy<Format::kFp16, Format::kFp16>(head_dim, s, ctas);
  if (fk == Format::kBf16 && fv == Format::kBf16)
    return DispatchDecodeOccupancy<Format::kBf16, Format::kBf16>(head_dim, s, ctas);
  return cudaErrorNotSupported;
}

cudaError_t LaunchExtendF16(Format fk, Format fv, int head_dim, const ExtendKernelParams& p, dim3 grid,
                            cudaStream_t stream) {
  if (fk == Format::kFp16 && fv == Format::kFp16)
    return DispatchExtend<Format::kFp16, Format::kFp16>(head_dim, p, grid, stream);
  if (fk == Format::kBf16 && fv == Format::kBf16)
    return DispatchExtend<Format::kBf16, Format::kBf16>(head_dim, p, grid, stream);
  return cudaErrorNotSupported;
}

}  // namespace kvtier::cuda_attn
