// CUDA page transcoding: the GPU side of page-out (quantize-and-gather) and page-in
// (dequantize-and-scatter). One kernel launch converts a whole batch of pages between two geometries of
// the same shape, producing exactly the bytes of TranscodePageRef (kernels/transcode.h) for every format.
//
// Pages live in "page sets": page i of a set is at data + slot(i) * data_stride, its parameter record at
// params + slot(i) * params_stride, where slot(i) = slots[i] when `slots` is given (a device array, e.g.
// GPU pool slots) and i otherwise (a compact staging buffer). So
//   page-out: in = the GPU pool with the batch's slots, out = compact staging (slots = nullptr)
//   page-in:  in = compact staging,                     out = the GPU pool with the batch's slots
// and any other pairing (pool to pool) works the same way.
//
// Work split: one warp per segment (a layer's K or V of one head), 4 warps per CTA, grid (pages,
// segments/4); the segment table is sorted by codec pair so that warps resident together run the same
// path. A lane owns 8 consecutive channels and reads/writes them with one 16-byte access (fp16) per token
// row (head_dim 96: 24 lanes cover two rows, 8 lanes idle). Statistics are reduced in registers and with
// warp shuffles, then each group's parameters are derived ONCE by one lane (32 groups per step) and
// exchanged through shared memory; see transcode_device.cuh. The per-element math is FormatTraits'
// (kernels/format.h). Kernel instances: fp16 or bf16 sources (page-out), fp16 or bf16 destinations
// (page-in), anything else (generic: the segment decoded into shared memory first).
//
// Measured: bench/results/transcode_gpu_h200.md.
//
// Supported on the GPU: head_dim 64, 96, 128, 256, block 16/32/64, every format and grouping (fp4_e2m1
// included), fp16 and bf16 pass-through.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/page_geometry.h"
#include "kernels/status.h"

namespace kvtier {

// A set of same-geometry pages in device memory (see the header comment). All pointers are device
// pointers; data, params and both strides must be multiples of 16 bytes. params may be null only when
// the geometry has no parameters.
struct DevicePageSet {
  uint8_t* data = nullptr;
  uint64_t data_stride = 0;  // bytes from one slot's data to the next; >= geometry page_bytes()
  uint8_t* params = nullptr;
  uint64_t params_stride = 0;       // bytes from one slot's parameter record to the next; >= param_bytes()
  const uint32_t* slots = nullptr;  // device array [num_pages], or null for slot(i) = i
};

// Host-side handle on the device copy of a (src, dst) segment table. Create() once per geometry pair
// (it allocates on the CURRENT device and copies synchronously); Launch() any number of times, from any
// thread, on streams of that device. Move-only; the
// table is freed by the destructor, which must not run while a launch that uses it is in flight.
class CudaTranscodePlan {
 public:
  static KernelOr<CudaTranscodePlan> Create(const PageGeometry& src, const PageGeometry& dst);

  CudaTranscodePlan(CudaTranscodePlan&& other) noexcept;
  CudaTranscodePlan& operator=(CudaTranscodePlan&& other) noexcept;
  CudaTranscodePlan(const CudaTranscodePlan&) = delete;
  CudaTranscodePlan& operator=(const CudaTranscodePlan&) = delete;
  ~CudaTranscodePlan();

  // Enqueues one kernel on `stream` that transcodes num_pages pages of `in` (src geometry) into `out`
  // (dst geometry). Returns InvalidArgument for misaligned or missing buffers and the launch error, if
  // any; errors during execution surface on the stream. Output pages must not overlap input pages.
  KernelStatus Launch(const DevicePageSet& in, const DevicePageSet& out, uint32_t num_pages, cudaStream_t stream) const;

  const PageGeometry& src() const { return src_; }
  const PageGeometry& dst() const { return dst_; }

 private:
  CudaTranscodePlan(PageGeometry src, PageGeometry dst) : src_(std::move(src)), dst_(std::move(dst)) {}
  PageGeometry src_, dst_;
  void* device_table_ = nullptr;  // SegmentPlan[num_segments], owned
  uint8_t path_ = 0;              // cuda_transcode::Path: which kernel instance serves this pair
  int32_t smem_groups_ = 0;       // shared-memory sizing (cuda_transcode::Params)
  int32_t smem_floats_per_warp_ = 0;
};

// Page-out: pages at `pool_slots` (device array [num_pages]) of the pool (plan.src() geometry) into a
// compact staging buffer of plan.dst() pages: page i at staging + i * dst.page_bytes(), its parameters at
// staging_params + i * dst.param_bytes().
KernelStatus QuantizeGather(const CudaTranscodePlan& plan, const DevicePageSet& pool, const uint32_t* pool_slots,
                            uint32_t num_pages, uint8_t* staging, uint8_t* staging_params, cudaStream_t stream);

// Page-in: the compact staging buffer (plan.src() pages, laid out as above) into the pool's
// `pool_slots` (plan.dst() geometry).
KernelStatus DequantizeScatter(const CudaTranscodePlan& plan, const uint8_t* staging, const uint8_t* staging_params,
                               uint32_t num_pages, const DevicePageSet& pool, const uint32_t* pool_slots,
                               cudaStream_t stream);

}  // namespace kvtier
