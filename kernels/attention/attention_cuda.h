// CUDA back end of paged attention (see attention.h for the operations and their parameters).
//
// The Params structs carry DEVICE pointers for q, out and the pool, and HOST copies of the batch
// (validated and used to plan the launch: split count, grid). The kernels read the device mirrors given
// in DeviceBatch, which must hold the same values. Everything is enqueued on `stream`; nothing
// synchronizes. Supported on CUDA (anything else is rejected before launch with kInvalidArgument):
//   page formats per head run (K/V): fp16/fp16, bf16/bf16, fp8_e4m3/fp8_e4m3, fp8_e5m2/fp8_e5m2,
//   int8/int8, int4/int4, int8/int4, fp4_e2m1/fp4_e2m1, with the default groupings (K per-channel, V
//   per-token with any group size; fp4: groups of 16 tokens / 16 channels); head_dim 64/96/128/256; block
//   size 16/32/64; q/out fp16, bf16 or fp32. Pool data and parameter mirror 16-byte aligned.
// A layer whose heads use several formats is run as one launch per head run (HeadRunsOf).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/attention/attention.h"

namespace kvtier {

// Device mirrors of PagedKvBatch (and of ExtendParams::q_indptr).
struct DeviceBatch {
  const int32_t* seq_lens = nullptr;     // [num_seqs]
  const int32_t* block_table = nullptr;  // [num_seqs][block_table_stride]
  const int32_t* q_indptr = nullptr;     // [num_seqs + 1], extend only
};

struct CudaLaunch {
  DeviceBatch device;
  void* workspace = nullptr;  // device scratch of at least *WorkspaceBytes(); may be null when that is 0
  size_t workspace_bytes = 0;
  cudaStream_t stream = nullptr;
};

// Split-K plan of a decode launch: the number of splits per sequence, chosen from the GPU's SM count,
// the batch size and the longest sequence (one long sequence still fills the GPU).
struct DecodePlan {
  int num_splits = 1;
  size_t workspace_bytes = 0;  // partial outputs + log-sum-exps; 0 when num_splits == 1
};
KernelOr<DecodePlan> PlanDecodeCuda(const DecodeParams& p);

KernelStatus PagedDecodeCuda(const DecodeParams& p, const CudaLaunch& launch);
KernelStatus PagedExtendCuda(const ExtendParams& p, const CudaLaunch& launch);

// Whether the CUDA kernels serve this head run (formats and groupings above).
KernelStatus CheckCudaSupport(const HeadRun& run, int head_dim);

}  // namespace kvtier
