// Host side of the CUDA attention back end: validation, CUDA support check, split-K planning, one launch
// per head run through the dispatch table, and the merge kernel that combines split partials.
#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/attention/attention_cuda.h"
#include "kernels/attention/attention_internal.h"
#include "kernels/cuda/attention_dispatch.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/device.h"

namespace kvtier {
namespace {

using cuda_attn::kAttnTile;

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMaxSplits = 128;

// Combines num_splits partial (o, lse) pairs per (sequence, query head) into out.
__global__ void MergeSplitsKernel(const float* partial_o, const float* partial_lse, int num_splits, int num_rows,
                                  int head_dim, int dtype, void* out) {
  const int row = blockIdx.x;  // sequence * num_q_heads + head
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, partial_lse[int64_t(s) * num_rows + row]);
  const float base = mx == -INFINITY ? 0.0f : mx;
  for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
    float acc = 0.0f, wsum = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
      const float w = exp2f(partial_lse[int64_t(s) * num_rows + row] - base);
      wsum += w;
      acc += w * partial_o[(int64_t(s) * num_rows + row) * head_dim + c];
    }
    cuda_attn::StoreActDevice(out, dtype, int64_t(row) * head_dim + c, wsum > 0.0f ? acc / wsum : 0.0f);
  }
}

bool IsFp8(Format f) { return f == Format::kFp8E4m3 || f == Format::kFp8E5m2; }
bool IsInt(Format f) { return f == Format::kInt8 || f == Format::kInt4; }

int VGroup(const HeadRun& run, int head_dim) { return run.value.group_size == 0 ? head_dim : run.value.group_size; }

constexpr int kRowsPerCta = 16;  // query heads per decode CTA (mma rows)

cuda_attn::TileLayout LayoutFor(const PageGeometry& g, int layer, const HeadRun& run, bool pad_rows) {
  const SegmentPlacement& k = g.segment(layer, Operand::kKey, run.first_head);
  const SegmentPlacement& v = g.segment(layer, Operand::kValue, run.first_head);
  return cuda_attn::MakeTileLayout(g.shape().head_dim, g.shape().block_size, GetFormatInfo(run.key.format).bits,
                                   GetFormatInfo(run.value.format).bits, k.param_bytes, v.param_bytes, pad_rows);
}

KernelStatus LaunchError(cudaError_t err, const char* what, const HeadRun& run) {
  if (err == cudaErrorNotSupported)
    return InvalidArgument(std::string(what) + ": no CUDA kernel for K " +
                           std::string(GetFormatInfo(run.key.format).name) + " / V " +
                           std::string(GetFormatInfo(run.value.format).name));
  return CudaStatus(err, what);
}

cuda_attn::DecodeStage StageFor(const PageGeometry& g, const HeadRun& run) {
  const LayoutShape& sh = g.shape();
  const SegmentDims dims = g.dims();
  auto slices = [&](const SegmentCodec& c, bool key) {
    const FormatInfo fi = GetFormatInfo(c.format);
    const uint32_t groups = static_cast<uint32_t>(NumGroups(c, dims));
    const uint32_t group_bytes = groups * static_cast<uint32_t>(fi.param_bytes);
    const uint32_t tail = groups > 0 ? static_cast<uint32_t>(fi.segment_param_bytes) : 0u;
    return key ? cuda_attn::KParamSlice(sh.head_dim, sh.block_size, group_bytes, tail,
                                        c.grouping == Grouping::kPerChannel && c.group_size != 0)
               : cuda_attn::VParamSlice(sh.block_size, group_bytes, tail, c.grouping == Grouping::kPerToken);
  };
  return cuda_attn::MakeDecodeStage(sh.head_dim, GetFormatInfo(run.key.format).bits,
                                    GetFormatInfo(run.value.format).bits, slices(run.key, true),
                                    slices(run.value, false));
}

// Resident decode CTAs per SM (the wave size the split count is planned against), asked of the CUDA
// occupancy calculator for each head run's kernel and shared memory; the most demanding run decides.
int DecodeCtasPerSm(const PageGeometry& g, int layer) {
  const int D = g.shape().head_dim;
  int ctas = 16;
  for (const HeadRun& run : HeadRunsOf(g, layer)) {
    const cuda_attn::DecodeStage st = StageFor(g, run);
    const Format fk = run.key.format, fv = run.value.format;
    int n = 1;
    cudaError_t err;
    if (fk == Format::kFp16 || fk == Format::kBf16) {
      err = cuda_attn::DecodeOccupancyF16(fk, fv, D, st, &n);
    } else if (IsFp8(fk)) {
      err = cuda_attn::DecodeOccupancyFp8(fk, fv, D, st, &n);
    } else if (fk == Format::kFp4E2m1) {
      err = cuda_attn::DecodeOccupancyFp4(fk, fv, D, st, &n);
    } else {
      err = cuda_attn::DecodeOccupancyInt(fk, fv, D, st, &n);
    }
    if (err != cudaSuccess) n = 1;  // unsupported runs are rejected later, with their own message
    ctas = std::min(ctas, std::max(n, 1));
  }
  return ctas;
}

}  // namespace

KernelStatus CheckCudaSupport(const HeadRun& run, int head_dim) {
  const Format k = run.key.format, v = run.value.format;
  const bool pair = (k == v) || (k == Format::kInt8 && v == Format::kInt4);
  if (!pair)
    return InvalidArgument("CUDA attention: K " + std::string(GetFormatInfo(k).name) + " with V " +
                           std::string(GetFormatInfo(v).name) + " is not in the dispatch table; use the CPU path");
  if (IsInt(k) && run.key.grouping != Grouping::kPerChannel)
    return InvalidArgument("CUDA attention: integer K must be grouped per channel");
  if (IsInt(v) && run.value.grouping != Grouping::kPerToken)
    return InvalidArgument("CUDA attention: integer V must be grouped per token");
  if (v == Format::kInt8 && VGroup(run, head_dim) != head_dim)
    return InvalidArgument("CUDA attention: int8 V must have one scale per token (group_size 0)");
  if (v == Format::kInt4 && VGroup(run, head_dim) % 8 != 0)
    return InvalidArgument("CUDA attention: int4 V group size must be a multiple of 8");
  if ((k == Format::kFp4E2m1) != (v == Format::kFp4E2m1))
    return InvalidArgument("CUDA attention: fp4_e2m1 pages need fp4_e2m1 for both K and V");
  if (k == Format::kFp4E2m1 && (run.key.grouping != Grouping::kPerChannel || run.key.group_size != 16 ||
                                run.value.grouping != Grouping::kPerToken || run.value.group_size != 16))
    return InvalidArgument("CUDA attention: fp4_e2m1 needs K per channel and V per token, groups of 16");
  if ((IsFp8(k) && run.key.grouping != Grouping::kPerSegment) ||
      (IsFp8(v) && run.value.grouping != Grouping::kPerSegment))
    return InvalidArgument("CUDA attention: fp8 must be scaled per segment");
  return KernelStatus::Ok();
}

KernelOr<DecodePlan> PlanDecodeCuda(const DecodeParams& p) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateAttention(p));
  const GpuInfo& gpu = ProbeGpu();
  if (!gpu.available) return Unavailable("CUDA attention: " + gpu.why_not);
  const LayoutShape& s = p.geometry->shape();
  const int group = p.num_q_heads / s.num_kv_heads;
  const int64_t base = int64_t(p.batch.num_seqs) * s.num_kv_heads * ((group + kRowsPerCta - 1) / kRowsPerCta);
  int max_len = 0;
  for (int i = 0; i < p.batch.num_seqs; ++i) max_len = std::max(max_len, p.batch.seq_lens[i]);
  const int max_tiles = (max_len + kAttnTile - 1) / kAttnTile;
  const int64_t slots = int64_t(gpu.sm_count) * DecodeCtasPerSm(*p.geometry, p.layer);
  // Estimated time in tiles: waves x (tiles per CTA + a fixed per-CTA cost of ~2 tiles).
  DecodePlan plan;
  double best = INFINITY;
  for (int sp = 1; sp <= std::min(max_tiles, kMaxSplits); ++sp) {
    const double waves = std::ceil(double(base * sp) / double(slots));
    const double cost = waves * (std::ceil(double(max_tiles) / sp) + 2.0);
    if (cost < best - 1e-9) {
      best = cost;
      plan.num_splits = sp;
    }
  }
  if (plan.num_splits > 1)
    plan.workspace_bytes =
        size_t(plan.num_splits) * p.batch.num_seqs * p.num_q_heads * (s.head_dim + 1) * sizeof(float);
  return plan;
}

KernelStatus PagedDecodeCuda(const DecodeParams& p, const CudaLaunch& launch) {
  KernelOr<DecodePlan> plan = PlanDecodeCuda(p);
  if (!plan.ok()) return plan.status();
  const PageGeometry& g = *p.geometry;
  const int D = g.shape().head_dim;
  const std::vector<HeadRun> runs = HeadRunsOf(g, p.layer);
  for (const HeadRun& run : runs) KVTIER_RETURN_IF_KERNEL_ERROR(CheckCudaSupport(run, D));
  if (launch.device.seq_lens == nullptr || launch.device.block_table == nullptr)
    return InvalidArgument("CUDA attention: device batch mirrors are null");
  if (reinterpret_cast<uintptr_t>(p.pool.data) % 16 != 0 || reinterpret_cast<uintptr_t>(p.pool.params) % 16 != 0)
    return InvalidArgument("CUDA attention: pool data and parameter mirror must be 16-byte aligned");
  if (launch.workspace_bytes < plan->workspace_bytes || (plan->workspace_bytes > 0 && launch.workspace == nullptr))
    return InvalidArgument("CUDA attention: workspace of " + std::to_string(launch.workspace_bytes) + " bytes, " +
                           std::to_string(plan->workspace_bytes) + " needed");
  const int group = p.num_q_heads / g.shape().num_kv_heads;
  const int rows = p.batch.num_seqs * p.num_q_heads;
  float* partial_o = static_cast<float*>(launch.workspace);
  float* partial_lse = partial_o + size_t(plan->num_splits) * rows * D;
  for (const HeadRun& run : runs) {
    cuda_attn::DecodeKernelParams k{};
    k.kv = MakePagedKvView(g, p.layer, run, p.pool, launch.device.block_table, p.batch.block_table_stride);
    k.seq_lens = launch.device.seq_lens;
    k.q = p.q;
    k.out = p.out;
    k.partial_o = partial_o;
    k.partial_lse = partial_lse;
    k.dtype = static_cast<int>(p.dtype);
    k.num_seqs = p.batch.num_seqs;
    k.num_q_heads = p.num_q_heads;
    k.group = group;
    k.g_chunks = (group + kRowsPerCta - 1) / kRowsPerCta;
    k.num_splits = plan->num_splits;
    k.scale_log2 = SoftmaxScale(p.sm_scale, D) * kLog2e;
    k.v_group = VGroup(run, D);
    k.chunks_log2 = g.shape().block_size == 16 ? 0 : g.shape().block_size == 32 ? 1 : 2;
    k.stage = StageFor(g, run);
    const dim3 grid(plan->num_splits, run.num_heads * k.g_chunks, p.batch.num_seqs);
    const Format fk = run.key.format, fv = run.value.format;
    cudaError_t err;
    if (fk == Format::kFp16 || fk == Format::kBf16) {
      err = cuda_attn::LaunchDecodeF16(fk, fv, D, k, grid, launch.stream);
    } else if (IsFp8(fk)) {
      err = cuda_attn::LaunchDecodeFp8(fk, fv, D, k, grid, launch.stream);
    } else if (fk == Format::kFp4E2m1) {
      err = cuda_attn::LaunchDecodeFp4(fk, fv, D, k, grid, launch.stream);
    } else {
      err = cuda_attn::LaunchDecodeInt(fk, fv, D, k, grid, launch.stream);
    }
    if (err != cudaSuccess) return LaunchError(err, "PagedDecodeKernel", run);
  }
  if (plan->num_splits > 1) {
    MergeSplitsKernel<<<rows, 128, 0, launch.stream>>>(partial_o, partial_lse, plan->num_splits, rows, D,
                                                       static_cast<int>(p.dtype), p.out);
    KVTIER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return KernelStatus::Ok();
}

KernelStatus PagedExtendCuda(const ExtendParams& p, const CudaLaunch& launch) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateAttention(p));
  const GpuInfo& gpu = ProbeGpu();
  if (!gpu.available) return Unavailable("CUDA attention: " + gpu.why_not);
  const PageGeometry& g = *p.geometry;
  const int D = g.shape().head_dim;
  const std::vector<HeadRun> runs = HeadRunsOf(g, p.layer);
  for (const HeadRun& run : runs) KVTIER_RETURN_IF_KERNEL_ERROR(CheckCudaSupport(run, D));
  if (launch.device.seq_lens == nullptr || launch.device.block_table == nullptr || launch.device.q_indptr == nullptr)
    return InvalidArgument("CUDA attention: device batch mirrors are null");
  const int group = p.num_q_heads / g.shape().num_kv_heads;
  int max_rows = 0, max_len = 0;
  for (int i = 0; i < p.batch.num_seqs; ++i) {
    max_rows = std::max(max_rows, (p.q_indptr[i + 1] - p.q_indptr[i]) * group);
    max_len = std::max(max_len, p.batch.seq_lens[i]);
  }
  // Split-KV when the (query tile, KV head, sequence) CTAs cannot fill the GPU and the prefix is long: a
  // prefix hit extends a few rows over thousands of cached tokens. Each split keeps >= 4 KV tiles.
  const int q_tiles = (max_rows + cuda_attn::kExtendRows - 1) / cuda_attn::kExtendRows;
  const int ctas = q_tiles * g.shape().num_kv_heads * p.batch.num_seqs;
  const int kv_tiles = (max_len + cuda_attn::kAttnTile - 1) / cuda_attn::kAttnTile;
  int num_splits = 1;
  if (ctas < gpu.sm_count && kv_tiles >= 8)
    num_splits = std::min({(2 * gpu.sm_count + ctas - 1) / ctas, kv_tiles / 4, 64});
  const int tiles_per_split = (kv_tiles + num_splits - 1) / num_splits;
  if (num_splits > 1) num_splits = (kv_tiles + tiles_per_split - 1) / tiles_per_split;
  const int64_t partial_rows = int64_t(p.q_indptr[p.batch.num_seqs]) * p.num_q_heads;
  float* partial_o = nullptr;
  if (num_splits > 1)  // stream-ordered scratch: freed after the merge on the same stream
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMallocAsync(reinterpret_cast<void**>(&partial_o),
                                                size_t(num_splits) * partial_rows * (D + 1) * sizeof(float),
                                                launch.stream));
  float* partial_lse = partial_o == nullptr ? nullptr : partial_o + size_t(num_splits) * partial_rows * D;
  auto release = [&] {
    if (partial_o != nullptr) IgnoreCudaError(cudaFreeAsync(partial_o, launch.stream));
  };
  for (const HeadRun& run : runs) {
    const Format fk = run.key.format, fv = run.value.format;
    const bool direct = (fk == Format::kFp16 || fk == Format::kBf16);
    cuda_attn::ExtendKernelParams k{};
    k.kv = MakePagedKvView(g, p.layer, run, p.pool, launch.device.block_table, p.batch.block_table_stride);
    k.seq_lens = launch.device.seq_lens;
    k.q_indptr = launch.device.q_indptr;
    k.q = p.q;
    k.out = p.out;
    k.dtype = static_cast<int>(p.dtype);
    k.num_q_heads = p.num_q_heads;
    k.group = group;
    k.scale_log2 = SoftmaxScale(p.sm_scale, D) * kLog2e;
    k.v_group = VGroup(run, D);
    k.tile = LayoutFor(g, p.layer, run, /*pad_rows=*/direct);
    k.mma_tile_off = cuda_attn::kExtendStages * k.tile.stage_bytes;
    k.q_tiles = q_tiles;
    k.num_splits = num_splits;
    k.tiles_per_split = tiles_per_split;
    k.partial_rows = partial_rows;
    k.partial_o = partial_o;
    k.partial_lse = partial_lse;
    const dim3 grid(q_tiles * num_splits, run.num_heads, p.batch.num_seqs);
    cudaError_t err;
    if (direct) {
      err = cuda_attn::LaunchExtendF16(fk, fv, D, k, grid, launch.stream);
    } else if (IsFp8(fk)) {
      err = cuda_attn::LaunchExtendFp8(fk, fv, D, k, grid, launch.stream);
    } else if (fk == Format::kFp4E2m1) {
      err = cuda_attn::LaunchExtendFp4(fk, fv, D, k, grid, launch.stream);
    } else {
      err = cuda_attn::LaunchExtendInt(fk, fv, D, k, grid, launch.stream);
    }
    if (err != cudaSuccess) {
      release();
      return LaunchError(err, "PagedExtendKernel", run);
    }
  }
  if (num_splits > 1) {
    MergeSplitsKernel<<<static_cast<unsigned>(partial_rows), 128, 0, launch.stream>>>(
        partial_o, partial_lse, num_splits, static_cast<int>(partial_rows), D, static_cast<int>(p.dtype), p.out);
    const cudaError_t err = cudaGetLastError();
    release();
    KVTIER_CUDA_RETURN_IF_ERROR(err);
  }
  return KernelStatus::Ok();
}

}  // namespace kvtier
