// Instantiates the attention kernels for the integer page formats (int8, int4, K int8 with V int4).
#include "kernels/cuda/attention_dispatch.h"

namespace kvtier::cuda_attn {

cudaError_t LaunchDecodeInt(Format fk, Format fv, int head_dim, const DecodeKernelParams& p, dim3 grid,
                            cudaStream_t stream) {
  if (fk == Format::kInt8 && fv == Format::kInt8)
    return DispatchDecode<Format::kInt8, Format::kInt8>(head_dim, p, grid, stream);
  if (fk == Format::kInt4 && fv == Format::kInt4)
    return DispatchDecode<Format::kInt4, Format::kInt4>(head_dim, p, grid, stream);
  if (fk == Format::kInt8 && fv == Format::kInt4)
    return DispatchDecode<Format::kInt8, Format::kInt4>(head_dim, p, grid, stream);
  return cudaErrorNotSupported;
}

cudaError_t DecodeOccupancyInt(Format fk, Format fv, int head_dim, const DecodeStage& s, int* ctas) {
  if (fk == Format::kInt8 && fv == Format::kInt8)
    return DispatchDecodeOccupancy<Format::kInt8, Format::kInt8>(head_dim, s, ctas);
  if (fk == Format::kInt4 && fv == Format::kInt4)
    return DispatchDecodeOccupancy<Format::kInt4, Format::kInt4>(head_dim, s, ctas);
  if (fk == Format::kInt8 && fv == Format::kInt4)
    return DispatchDecodeOccupancy<Format::kInt8, Format::kInt4>(head_dim, s, ctas);
  return cudaErrorNotSupported;
}

cudaError_t LaunchExtendInt(Format fk, Format fv, int head_dim, const ExtendKernelParams& p, dim3 grid,
                            cudaStream_t stream) {
  if (fk == Format::kInt8 && fv == Format::kInt8)
    return DispatchExtend<Format::kInt8, Format::kInt8>(head_dim, p, grid, stream);
  if (fk == Format::kInt4 && fv == Format::kInt4)
    return DispatchExtend<Format::kInt4, Format::kInt4>(head_dim, p, grid, stream);
  if (fk == Format::kInt8 && fv == Format::kInt4)
    return DispatchExtend<Format::kInt8, Format::kInt4>(head_dim, p, grid, stream);
  return cudaErrorNotSupported;
}

}  // namespace kvtier::cuda_attn
