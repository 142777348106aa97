// Host side of the CUDA transcode: builds and uploads the segment table, checks buffers, launches.
#include "kernels/cuda/transcode_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/transcode_kernel.h"
#include "kernels/transcode.h"

namespace kvtier {
namespace {

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

cuda_transcode::PageSet ToKernel(const DevicePageSet& s) {
  return {s.data, s.data_stride, s.params, s.params_stride, s.slots};
}

KernelStatus CheckPageSet(const DevicePageSet& s, const PageGeometry& g, const char* which) {
  const std::string w(which);
  if (!s.data) return InvalidArgument(w + ": no data pointer");
  if (!Aligned16(s.data) || s.data_stride % 16 != 0)
    return InvalidArgument(w + ": data pointer and stride must be multiples of 16 bytes");
  if (s.data_stride < g.page_bytes()) return InvalidArgument(w + ": data stride smaller than a page");
  if (g.param_bytes() > 0) {
    if (!s.params) return InvalidArgument(w + ": the geometry has parameters but no parameter pointer was given");
    if (!Aligned16(s.params) || s.params_stride % 16 != 0)
      return InvalidArgument(w + ": parameter pointer and stride must be multiples of 16 bytes");
    if (s.params_stride < g.param_bytes()) return InvalidArgument(w + ": parameter stride smaller than a record");
  }
  return KernelStatus::Ok();
}

}  // namespace

KernelOr<CudaTranscodePlan> CudaTranscodePlan::Create(const PageGeometry& src, const PageGeometry& dst) {
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckTranscodable(src, dst));
  const int channels = src.shape().head_dim;
  if (channels != 64 && channels != 128 && channels != 256)
    return InvalidArgument("CUDA transcode supports head_dim 64, 128 and 256, not " + std::to_string(channels) +
                           "; use TranscodePagesCpu");
  for (int s = 0; s < src.num_segments(); ++s)
    if (src.segment(s).codec.format == Format::kFp4E2m1 || dst.segment(s).codec.format == Format::kFp4E2m1)
      return InvalidArgument("CUDA transcode does not handle fp4_e2m1 yet; use TranscodePagesCpu");
  // Entries sorted by codec pair, so that neighbouring warps run the same code path.
  std::vector<int> order(src.num_segments());
  std::iota(order.begin(), order.end(), 0);
  auto key = [&](int s) {
    const SegmentCodec& a = src.segment(s).codec;
    const SegmentCodec& b = dst.segment(s).codec;
    return std::tuple(a.format, a.grouping, a.group_size, b.format, b.grouping, b.group_size);
  };
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return key(x) < key(y); });
  std::vector<cuda_transcode::SegmentPlan> table(src.num_segments());
  for (size_t e = 0; e < order.size(); ++e) {
    const SegmentPlacement& a = src.segment(order[e]);
    const SegmentPlacement& b = dst.segment(order[e]);
    table[e] = {a.data_offset,
                b.data_offset,
                a.param_offset,
                b.param_offset,
                static_cast<uint8_t>(a.codec.format),
                static_cast<uint8_t>(a.codec.grouping),
                static_cast<uint8_t>(b.codec.format),
                static_cast<uint8_t>(b.codec.grouping),
                static_cast<uint16_t>(ChannelsPerGroup(a.codec, channels)),
                static_cast<uint16_t>(ChannelsPerGroup(b.codec, channels))};
  }
  CudaTranscodePlan plan(src, dst);
  bool src_plain = true, dst_plain = true;
  for (int s = 0; s < src.num_segments(); ++s) {
    src_plain = src_plain && !IsQuantized(src.segment(s).codec.format);
    dst_plain = dst_plain && !IsQuantized(dst.segment(s).codec.format);
  }
  plan.path_ = static_cast<uint8_t>(src_plain   ? cuda_transcode::Path::kFromPassThrough
                                    : dst_plain ? cuda_transcode::Path::kToPassThrough
                                                : cuda_transcode::Path::kGeneric);
  const size_t bytes = table.size() * sizeof(table[0]);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMalloc(&plan.device_table_, bytes));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(plan.device_table_, table.data(), bytes, cudaMemcpyHostToDevice));
  return plan;
}

CudaTranscodePlan::CudaTranscodePlan(CudaTranscodePlan&& other) noexcept
    : src_(std::move(other.src_)),
      dst_(std::move(other.dst_)),
      device_table_(std::exchange(other.device_table_, nullptr)),
      path_(other.path_) {}

CudaTranscodePlan& CudaTranscodePlan::operator=(CudaTranscodePlan&& other) noexcept {
  if (this != &other) {
    if (device_table_) (void)cudaFree(device_table_);
    src_ = std::move(other.src_);
    dst_ = std::move(other.dst_);
    device_table_ = std::exchange(other.device_table_, nullptr);
    path_ = other.path_;
  }
  return *this;
}

CudaTranscodePlan::~CudaTranscodePlan() {
  if (device_table_) (void)cudaFree(device_table_);
}

KernelStatus CudaTranscodePlan::Launch(const DevicePageSet& in, const DevicePageSet& out, uint32_t num_pages,
                                       cudaStream_t stream) const {
  if (num_pages == 0) return KernelStatus::Ok();
  if (num_pages > 0x7fffffffu) return InvalidArgument("CUDA transcode: too many pages for one launch");
  if (!device_table_) return InvalidArgument("CUDA transcode: plan was moved from");
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckPageSet(in, src_, "input pages"));
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckPageSet(out, dst_, "output pages"));
  cuda_transcode::Params p{};
  p.segments = static_cast<const cuda_transcode::SegmentPlan*>(device_table_);
  p.num_segments = src_.num_segments();
  p.tokens = src_.shape().block_size;
  p.channels = src_.shape().head_dim;
  p.num_pages = num_pages;
  p.in = ToKernel(in);
  p.out = ToKernel(out);
  KVTIER_CUDA_RETURN_IF_ERROR(cuda_transcode::LaunchTranscode(p, static_cast<cuda_transcode::Path>(path_), stream));
  return KernelStatus::Ok();
}

KernelStatus QuantizeGather(const CudaTranscodePlan& plan, const DevicePageSet& pool, const uint32_t* pool_slots,
                            uint32_t num_pages, uint8_t* staging, uint8_t* staging_params, cudaStream_t stream) {
  if (!pool_slots && num_pages) return InvalidArgument("QuantizeGather: no slot array");
  DevicePageSet in = pool;
  in.slots = pool_slots;
  const DevicePageSet out{staging, plan.dst().page_bytes(), staging_params, plan.dst().param_bytes(), nullptr};
  return plan.Launch(in, out, num_pages, stream);
}

KernelStatus DequantizeScatter(const CudaTranscodePlan& plan, const uint8_t* staging, const uint8_t* staging_params,
                               uint32_t num_pages, const DevicePageSet& pool, const uint32_t* pool_slots,
                               cudaStream_t stream) {
  if (!pool_slots && num_pages) return InvalidArgument("DequantizeScatter: no slot array");
  const DevicePageSet in{const_cast<uint8_t*>(staging), plan.src().page_bytes(), const_cast<uint8_t*>(staging_params),
                         plan.src().param_bytes(), nullptr};
  DevicePageSet out = pool;
  out.slots = pool_slots;
  return plan.Launch(in, out, num_pages, stream);
}

}  // namespace kvtier
