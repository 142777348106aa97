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

// SegmentPlan's group field: per-token channels per group, per-channel tokens per group, else head_dim.
int GroupField(const SegmentCodec& c, SegmentDims d) {
  if (c.grouping == Grouping::kPerChannel) return TokensPerGroup(c, d.tokens);
  return ChannelsPerGroup(c, d.channels);
}

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
  if (channels != 64 && channels != 96 && channels != 128 && channels != 256)
    return InvalidArgument("CUDA transcode supports head_dim 64, 96, 128 and 256, not " + std::to_string(channels) +
                           "; use TranscodePagesCpu");
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
                static_cast<uint16_t>(GroupField(a.codec, src.dims())),
                static_cast<uint16_t>(GroupField(b.codec, dst.dims()))};
  }
  CudaTranscodePlan plan(src, dst);
  // The kernel instance: all sources fp16 (or all bf16): page-out; all destinations fp16 (bf16): page-in.
  auto all_are = [](const PageGeometry& g, Format f) {
    for (int s = 0; s < g.num_segments(); ++s)
      if (g.segment(s).codec.format != f) return false;
    return true;
  };
  using cuda_transcode::Path;
  // head_dim 96 (12 vectors per token row, 24 active lanes) runs on the generic kernel only.
  const Path path = channels == 96                ? Path::kGeneric
                    : all_are(src, Format::kFp16) ? Path::kFromFp16
                    : all_are(src, Format::kBf16) ? Path::kFromBf16
                    : all_are(dst, Format::kFp16) ? Path::kToFp16
                    : all_are(dst, Format::kBf16) ? Path::kToBf16
                                                  : Path::kGeneric;
  plan.path_ = static_cast<uint8_t>(path);
  // Shared memory per warp: statistics / parameters of the largest destination segment (a multiple of 4
  // floats so that every warp's slice stays 16-byte aligned), plus the decoded segment on the generic path.
  int groups = 0;
  for (int s = 0; s < dst.num_segments(); ++s) groups = std::max(groups, NumGroups(dst.segment(s).codec, dst.dims()));
  plan.smem_groups_ = (groups + 3) / 4 * 4;
  plan.smem_floats_per_warp_ = 2 * plan.smem_groups_ + (path == Path::kGeneric ? src.dims().tokens * channels : 0);
  const size_t bytes = table.size() * sizeof(table[0]);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMalloc(&plan.device_table_, bytes));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(plan.device_table_, table.data(), bytes, cudaMemcpyHostToDevice));
  return plan;
}

CudaTranscodePlan::CudaTranscodePlan(CudaTranscodePlan&& other) noexcept
    : src_(std::move(other.src_)),
      dst_(std::move(other.dst_)),
      device_table_(std::exchange(other.device_table_, nullptr)),
      path_(other.path_),
      smem_groups_(other.smem_groups_),
      smem_floats_per_warp_(other.smem_floats_per_warp_) {}

CudaTranscodePlan& CudaTranscodePlan::operator=(CudaTranscodePlan&& other) noexcept {
  if (this != &other) {
    if (device_table_) IgnoreCudaError(cudaFree(device_table_));
    src_ = std::move(other.src_);
    dst_ = std::move(other.dst_);
    device_table_ = std::exchange(other.device_table_, nullptr);
    path_ = other.path_;
    smem_groups_ = other.smem_groups_;
    smem_floats_per_warp_ = other.smem_floats_per_warp_;
  }
  return *this;
}

CudaTranscodePlan::~CudaTranscodePlan() {
  if (device_table_) IgnoreCudaError(cudaFree(device_table_));
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
  p.smem_groups = smem_groups_;
  p.smem_floats_per_warp = smem_floats_per_warp_;
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
