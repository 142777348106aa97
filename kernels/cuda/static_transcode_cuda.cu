// CUDA static-scale transcode: host side (table upload, checks) and the kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/static_transcode_cuda.h"
#include "kernels/precision_policy.h"
#include "kernels/segment.h"
#include "kernels/static_codec.h"
#include "kernels/static_transcode.h"

namespace kvtier {
namespace {

struct StaticSegment {
  uint64_t src_data;
  uint64_t dst_data;
  uint32_t src_params;
  uint32_t dst_params;
  uint32_t copy_bytes;   // equal codecs: code bytes to copy
  uint32_t copy_params;  // equal codecs: parameter bytes to copy
  uint8_t src_format;
  uint8_t dst_format;
  uint8_t copy;  // equal codecs: copy the codes
  uint8_t pad;
};

struct PageSetK {
  uint8_t* data;
  uint64_t data_stride;
  uint8_t* params;
  uint64_t params_stride;
  const uint32_t* slots;
};

constexpr int kThreads = 256;

__device__ __forceinline__ float DecodeAt(uint8_t format, const uint8_t* data, int i, float scale) {
  switch (static_cast<Format>(format)) {
    case Format::kFp16:
      return FormatTraits<Format::kFp16>::Decode(LoadCode<Format::kFp16>(data, i), QParams{});
    case Format::kBf16:
      return FormatTraits<Format::kBf16>::Decode(LoadCode<Format::kBf16>(data, i), QParams{});
    case Format::kInt8:
      return FormatTraits<Format::kInt8>::Decode(LoadCode<Format::kInt8>(data, i), StaticParams(scale));
    case Format::kFp8E4m3:
      return FormatTraits<Format::kFp8E4m3>::Decode(LoadCode<Format::kFp8E4m3>(data, i), StaticParams(scale));
    case Format::kFp8E5m2:
      return FormatTraits<Format::kFp8E5m2>::Decode(LoadCode<Format::kFp8E5m2>(data, i), StaticParams(scale));
    default:
      return 0.0f;  // refused on the host
  }
}

template <Format F>
__device__ __forceinline__ uint32_t EncodeStatic(float x, float scale, uint8_t* data, int i) {
  const QParams p = StaticParams(scale);
  StoreCode<F>(data, i, FormatTraits<F>::Encode(x, p));
  return StaticClipped<F>(x, p.inv_scale);
}

__device__ __forceinline__ uint32_t EncodeAt(uint8_t format, float x, float scale, uint8_t* data, int i) {
  switch (static_cast<Format>(format)) {
    case Format::kFp16:
      StoreCode<Format::kFp16>(data, i, FormatTraits<Format::kFp16>::Encode(x, QParams{}));
      return 0;
    case Format::kBf16:
      StoreCode<Format::kBf16>(data, i, FormatTraits<Format::kBf16>::Encode(x, QParams{}));
      return 0;
    case Format::kInt8:
      return EncodeStatic<Format::kInt8>(x, scale, data, i);
    case Format::kFp8E4m3:
      return EncodeStatic<Format::kFp8E4m3>(x, scale, data, i);
    case Format::kFp8E5m2:
      return EncodeStatic<Format::kFp8E5m2>(x, scale, data, i);
    default:
      return 0;
  }
}

__global__ void __launch_bounds__(kThreads)
    StaticTranscodeKernel(const StaticSegment* segments, int num_segments, const float* scales, int tokens,
                          int channels, PageSetK in, PageSetK out, unsigned long long* clipped) {
  const uint32_t page = blockIdx.x;
  const uint64_t in_slot = in.slots ? in.slots[page] : page;
  const uint64_t out_slot = out.slots ? out.slots[page] : page;
  const int n = tokens * channels;
  uint32_t clips = 0;
  for (int seg_index = static_cast<int>(blockIdx.y); seg_index < num_segments;
       seg_index += static_cast<int>(gridDim.y)) {
    const StaticSegment seg = segments[seg_index];
    const uint8_t* src = in.data + in_slot * in.data_stride + seg.src_data;
    uint8_t* dst = out.data + out_slot * out.data_stride + seg.dst_data;
    if (seg.copy) {
      for (uint32_t b = threadIdx.x; b < seg.copy_bytes; b += kThreads) dst[b] = src[b];
      for (uint32_t b = threadIdx.x; b < seg.copy_params; b += kThreads)
        out.params[out_slot * out.params_stride + seg.dst_params + b] =
            in.params[in_slot * in.params_stride + seg.src_params + b];
      continue;
    }
    const float* s = scales + static_cast<size_t>(seg_index) * channels;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const float scale = s[i % channels];
      clips += EncodeAt(seg.dst_format, DecodeAt(seg.src_format, src, i, scale), scale, dst, i);
    }
  }
  __shared__ unsigned int total;
  if (threadIdx.x == 0) total = 0;
  __syncthreads();
  if (clips) atomicAdd(&total, clips);
  __syncthreads();
  if (threadIdx.x == 0 && total && clipped) atomicAdd(clipped, static_cast<unsigned long long>(total));
}

bool PassThroughOrStatic(const SegmentCodec& c) {
  return c.grouping == Grouping::kNone || c.grouping == Grouping::kStaticChannel;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

KernelStatus CheckSet(const DevicePageSet& s, const PageGeometry& g, const char* which) {
  const std::string w(which);
  if (!s.data || !Aligned16(s.data) || s.data_stride % 16 != 0 || s.data_stride < g.page_bytes())
    return InvalidArgument(w + ": missing or misaligned data, or stride smaller than a page");
  if (g.param_bytes() > 0 && (!s.params || !Aligned16(s.params) || s.params_stride < g.param_bytes()))
    return InvalidArgument(w + ": the geometry has parameters but no usable parameter pointer/stride");
  return KernelStatus::Ok();
}

}  // namespace

KernelOr<CudaStaticTranscode> CudaStaticTranscode::Create(const PageGeometry& src, const PageGeometry& dst,
                                                          std::span<const float> scales) {
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckStaticTranscode(src, dst, scales));
  std::vector<StaticSegment> table(src.num_segments());
  for (int s = 0; s < src.num_segments(); ++s) {
    const SegmentPlacement& a = src.segment(s);
    const SegmentPlacement& b = dst.segment(s);
    const bool copy = a.codec == b.codec;
    if (!copy && (!PassThroughOrStatic(a.codec) || !PassThroughOrStatic(b.codec)))
      return InvalidArgument("CUDA static transcode converts only between fp16/bf16 and static-scale segments (" +
                             CodecSpecString(a.codec) + " -> " + CodecSpecString(b.codec) + ")");
    table[s] = {a.data_offset,
                b.data_offset,
                a.param_offset,
                b.param_offset,
                copy ? a.data_bytes : 0u,
                copy ? a.param_bytes : 0u,
                static_cast<uint8_t>(a.codec.format),
                static_cast<uint8_t>(b.codec.format),
                static_cast<uint8_t>(copy),
                0};
  }
  CudaStaticTranscode plan(src, dst);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMalloc(&plan.device_table_, table.size() * sizeof(StaticSegment)));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&plan.device_scales_), scales.size_bytes()));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(plan.device_table_, table.data(), table.size() * sizeof(StaticSegment), cudaMemcpyHostToDevice));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(plan.device_scales_, scales.data(), scales.size_bytes(), cudaMemcpyHostToDevice));
  return KernelOr<CudaStaticTranscode>(std::move(plan));
}

CudaStaticTranscode::CudaStaticTranscode(CudaStaticTranscode&& o) noexcept
    : src_(std::move(o.src_)),
      dst_(std::move(o.dst_)),
      device_table_(o.device_table_),
      device_scales_(o.device_scales_) {
  o.device_table_ = nullptr;
  o.device_scales_ = nullptr;
}

CudaStaticTranscode& CudaStaticTranscode::operator=(CudaStaticTranscode&& o) noexcept {
  if (this != &o) {
    Free();
    src_ = std::move(o.src_);
    dst_ = std::move(o.dst_);
    device_table_ = o.device_table_;
    device_scales_ = o.device_scales_;
    o.device_table_ = nullptr;
    o.device_scales_ = nullptr;
  }
  return *this;
}

CudaStaticTranscode::~CudaStaticTranscode() { Free(); }

void CudaStaticTranscode::Free() {
  if (device_table_) IgnoreCudaError(cudaFree(device_table_));
  if (device_scales_) IgnoreCudaError(cudaFree(device_scales_));
  device_table_ = nullptr;
  device_scales_ = nullptr;
}

KernelStatus CudaStaticTranscode::Launch(const DevicePageSet& in, const DevicePageSet& out, uint32_t num_pages,
                                         unsigned long long* clipped, cudaStream_t stream) const {
  if (num_pages == 0) return KernelStatus::Ok();
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckSet(in, src_, "input"));
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckSet(out, dst_, "output"));
  if (num_pages > 0x7fffffffu) return InvalidArgument("CUDA static transcode: too many pages for one launch");
  const dim3 grid(num_pages, static_cast<unsigned>(std::min(src_.num_segments(), 65535)));
  StaticTranscodeKernel<<<grid, kThreads, 0, stream>>>(
      static_cast<const StaticSegment*>(device_table_), src_.num_segments(), device_scales_, src_.dims().tokens,
      src_.dims().channels, PageSetK{in.data, in.data_stride, in.params, in.params_stride, in.slots},
      PageSetK{out.data, out.data_stride, out.params, out.params_stride, out.slots}, clipped);
  return CudaStatus(cudaGetLastError(), "StaticTranscodeKernel launch");
}

}  // namespace kvtier
