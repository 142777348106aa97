// LocalAttention: kvtier's paged attention run by the engine itself over a MappedPool — the fast path
// (no RPC per layer): on a GPU pool the CUDA kernels are enqueued on the caller's stream; on a host pool
// (the host device) the CPU kernels run in the calling thread. The block table holds pool slots of blocks
// the session owns or has pinned (Allocate, Lookup with pin/promote, Prefetch with pin).
//
// Thread-safety: one LocalAttention per thread (it keeps device scratch for the batch mirrors).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "client/pool_mapping.h"

namespace kvtier {

struct LocalAttendBatch {
  int32_t layer = 0;
  int32_t num_q_heads = 0;
  float sm_scale = 0.0f;              // 0: 1/sqrt(head_dim)
  std::vector<int32_t> seq_lens;      // [num_seqs]
  std::vector<int32_t> q_indptr;      // [num_seqs + 1]; every sequence 1 query: decode
  std::vector<int32_t> block_table;   // [num_seqs][block_table_stride] pool slots
  int32_t block_table_stride = 0;
  const void* q = nullptr;            // [q_indptr.back()][num_q_heads][head_dim] in the pool's dtype:
  void* out = nullptr;                // host memory for a host pool, device memory for a GPU pool
};

class LocalAttention {
 public:
  explicit LocalAttention(const MappedPool& pool, int cpu_threads = 1) : pool_(pool), cpu_threads_(cpu_threads) {}
  ~LocalAttention();
  LocalAttention(const LocalAttention&) = delete;
  LocalAttention& operator=(const LocalAttention&) = delete;

  // Validates and runs (GPU: enqueues on `cuda_stream`, a cudaStream_t; nothing synchronizes).
  absl::Status Run(const LocalAttendBatch& b, void* cuda_stream = nullptr);

 private:
  const MappedPool& pool_;
  const int cpu_threads_;
  [[maybe_unused]] void* scratch_ = nullptr;  // (CUDA builds) device: seq_lens, block table, q_indptr mirrors and split-K workspace
  [[maybe_unused]] size_t scratch_bytes_ = 0;
};

}  // namespace kvtier
