// The device-side contract of the CUDA transcode kernel (internal to kernels/cuda/): the segment table
// copied to the device once per plan, and the one Params struct a launch takes. Plain C++ so that the
// host code that fills it compiles without nvcc.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kvtier::cuda_transcode {

// One segment of the page, in both geometries. 32 bytes.
struct SegmentPlan {
  uint64_t src_data;     // byte offset of the segment's codes in a src page
  uint64_t dst_data;     // ... in a dst page
  uint32_t src_params;   // byte offset of its parameters in a src parameter record
  uint32_t dst_params;   // ... in a dst parameter record
  uint8_t src_format;    // Format
  uint8_t src_grouping;  // Grouping
  uint8_t dst_format;
  uint8_t dst_grouping;
  uint16_t src_group;  // kPerToken: channels per group; kPerChannel: tokens per group (else head_dim)
  uint16_t dst_group;
};
static_assert(sizeof(SegmentPlan) == 32);

struct PageSet {
  uint8_t* data;
  uint64_t data_stride;
  uint8_t* params;
  uint64_t params_stride;
  const uint32_t* slots;  // [num_pages] or null (slot i = i)
};

struct Params {
  const SegmentPlan* segments;  // [num_segments], device; any order (the host sorts by codec pair)
  int32_t num_segments;
  int32_t tokens;    // block_size
  int32_t channels;  // head_dim: 64, 128 or 256
  uint32_t num_pages;
  int32_t smem_groups;           // shared floats per warp for each of stats lo / hi (>= destination groups)
  int32_t smem_floats_per_warp;  // 2 * smem_groups (+ tokens * channels on the generic path)
  PageSet in;
  PageSet out;
};

inline constexpr int kWarpsPerCta = 4;

// Kernel instances, chosen on the host from the segment table, each compiling only the (source,
// destination) format pairs it can meet: page-out reads only fp16 (or only bf16) segments, page-in writes
// only fp16 (or only bf16) segments; anything else takes the generic instance (one warp per CTA, the
// segment decoded into shared memory first).
enum class Path : uint8_t {
  kFromFp16 = 0,
  kFromBf16 = 1,
  kToFp16 = 2,
  kToBf16 = 3,
  kGeneric = 4,
};

// Shared memory per CTA for a launch of `path` with these Params fields.
inline size_t SharedBytes(Path path, const Params& p) {
  return static_cast<size_t>(p.smem_floats_per_warp) * 4 * (path == Path::kGeneric ? 1 : kWarpsPerCta);
}

// Enqueues the kernel: one CTA of kWarpsPerCta warps (generic: 1) per (page, table entries); grid x is
// the page, y (and z beyond 65535) the entry chunk.
cudaError_t LaunchTranscode(const Params& params, Path path, cudaStream_t stream);

// Per-instance launchers (one translation unit each, so that they compile in parallel).
cudaError_t LaunchFromPassThrough(const Params& params, Path path, dim3 grid, size_t smem, cudaStream_t stream);
cudaError_t LaunchToPassThrough(const Params& params, Path path, dim3 grid, size_t smem, cudaStream_t stream);
cudaError_t LaunchGeneric(const Params& params, dim3 grid, size_t smem, cudaStream_t stream);

}  // namespace kvtier::cuda_transcode
