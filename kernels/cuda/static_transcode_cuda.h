// CUDA static-scale transcode (kernels/static_transcode.h on the GPU): page-out of GPU-resident
// fp16/bf16 pages into pages whose segments use calibrated static scales (grouping kStaticChannel, int8 or
// fp8) or stay unquantized, and page-in back; the same bytes and clip count as TranscodePageStaticRef.
//
// Supported segment pairs: equal codecs (copied), and any pair whose source and destination are each
// fp16/bf16 or static-scale. Dynamic (per-block) quantized codecs are left to CudaTranscodePlan.
// One CTA of 256 threads per (page, segment); a thread converts values i, i + 256, ...; clipped values
// are reduced per CTA and added to one device counter.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>

#include "kernels/cuda/transcode_cuda.h"
#include "kernels/page_geometry.h"
#include "kernels/status.h"

namespace kvtier {

// The device copy of a (src, dst) segment table and the layout's static scale table. Create() allocates
// on the CURRENT device and copies synchronously; Launch() from any thread on streams of that device.
class CudaStaticTranscode {
 public:
  static KernelOr<CudaStaticTranscode> Create(const PageGeometry& src, const PageGeometry& dst,
                                              std::span<const float> scales);

  CudaStaticTranscode(CudaStaticTranscode&& other) noexcept;
  CudaStaticTranscode& operator=(CudaStaticTranscode&& other) noexcept;
  CudaStaticTranscode(const CudaStaticTranscode&) = delete;
  CudaStaticTranscode& operator=(const CudaStaticTranscode&) = delete;
  ~CudaStaticTranscode();

  // Enqueues the conversion of num_pages pages of `in` (src geometry) into `out` (dst geometry). When
  // `clipped` (a device counter) is given, the values clipped by static scales are added to it.
  KernelStatus Launch(const DevicePageSet& in, const DevicePageSet& out, uint32_t num_pages,
                      unsigned long long* clipped, cudaStream_t stream) const;

  const PageGeometry& src() const { return src_; }
  const PageGeometry& dst() const { return dst_; }

 private:
  CudaStaticTranscode(PageGeometry src, PageGeometry dst) : src_(std::move(src)), dst_(std::move(dst)) {}
  void Free();
  PageGeometry src_, dst_;
  void* device_table_ = nullptr;   // StaticSegment[num_segments], owned
  float* device_scales_ = nullptr;  // [num_segments * head_dim], owned
};

}  // namespace kvtier
