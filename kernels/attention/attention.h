// Paged attention over quantized pages: the host API shared by the CPU and CUDA back ends.
//
// Two operations, each launched per layer:
//  - Decode: every sequence has one new query token; it attends to the sequence's whole cached KV
//    (seq_len tokens, the new token's K/V already written into the pages by the caller).
//  - Prefix-extend: sequence i has n_i new query tokens (rows q_indptr[i]..q_indptr[i+1]-1 of q); they sit
//    at positions seq_len_i - n_i .. seq_len_i - 1 and attend causally to the cached prefix and to the new
//    tokens up to and including themselves (the new tokens' K/V are already in the pages).
// Both use GQA: query head qh reads KV head qh / (num_q_heads / num_kv_heads) (MQA included).
// out = softmax(sm_scale * q K^T) V, computed from the dequantized K/V (FormatTraits) with fp32 (or
// wider) accumulation; q and out are fp16, bf16 or fp32 ([rows][num_q_heads][head_dim], contiguous).
//
// Every entry point validates first (ValidateAttention): a block-table entry outside the pool, a layer
// the geometry lacks, a head_dim that is not the layout's, a zero-length sequence, a bad GQA ratio, ...
// return a KernelStatus error and nothing runs. The block table and lengths are therefore always given
// in host memory (the CUDA back end also takes device mirrors of them; see attention_cuda.h).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/attention/paged_kv.h"
#include "kernels/page_geometry.h"
#include "kernels/status.h"

namespace kvtier {

// Element type of q and out.
enum class ActDtype : uint8_t { kFp16 = 0, kBf16 = 1, kFp32 = 2 };

inline int ActDtypeBytes(ActDtype d) { return d == ActDtype::kFp32 ? 4 : 2; }

// The page pool as attention sees it (device pointers for CUDA, host pointers for CPU).
struct PagedKvPool {
  const uint8_t* data = nullptr;    // [num_slots][geometry.page_bytes()]
  const uint8_t* params = nullptr;  // [num_slots][geometry.param_bytes()]; may be null if param_bytes() == 0
  int64_t num_slots = 0;
};

// The sequences of a batch, in HOST memory (validated, and used to plan the launch).
struct PagedKvBatch {
  int32_t num_seqs = 0;
  const int32_t* seq_lens = nullptr;     // [num_seqs] KV tokens of each sequence (including new tokens)
  const int32_t* block_table = nullptr;  // [num_seqs][block_table_stride] slot ids; only the first
                                         // ceil(seq_len / block_size) entries of a row are read
  int32_t block_table_stride = 0;
};

// Decode: one query token per sequence.
struct DecodeParams {
  const PageGeometry* geometry = nullptr;  // the layout's geometry; outlives the call
  PagedKvPool pool;
  PagedKvBatch batch;
  int32_t layer = 0;        // layer whose K/V segments are read
  int32_t num_q_heads = 0;  // a multiple of geometry->shape().num_kv_heads
  int32_t head_dim = 0;     // head_dim of q/out; must equal the layout's
  ActDtype dtype = ActDtype::kFp16;
  const void* q = nullptr;  // [num_seqs][num_q_heads][head_dim]
  void* out = nullptr;      // [num_seqs][num_q_heads][head_dim]
  float sm_scale = 0.0f;    // softmax scale; 0 means 1/sqrt(head_dim)
};

// Prefix-extend: n_i new query tokens per sequence, causal over prefix + new tokens.
struct ExtendParams {
  const PageGeometry* geometry = nullptr;
  PagedKvPool pool;
  PagedKvBatch batch;
  const int32_t* q_indptr = nullptr;  // HOST [num_seqs + 1]; q rows of sequence i: q_indptr[i]..q_indptr[i+1]-1;
                                      // q_indptr[0] == 0, 1 <= n_i <= seq_len_i
  int32_t layer = 0;
  int32_t num_q_heads = 0;
  int32_t head_dim = 0;
  ActDtype dtype = ActDtype::kFp16;
  const void* q = nullptr;  // [q_indptr[num_seqs]][num_q_heads][head_dim]
  void* out = nullptr;      // [q_indptr[num_seqs]][num_q_heads][head_dim]
  float sm_scale = 0.0f;
};

// A run of consecutive KV heads of one layer that share their K codec and their V codec.
struct HeadRun {
  int32_t first_head = 0;
  int32_t num_heads = 0;
  SegmentCodec key, value;
};

// The runs of `layer`, in head order (one run when the layer has one format).
std::vector<HeadRun> HeadRunsOf(const PageGeometry& geometry, int layer);

// Builds the view of one head run (pointers from `pool`, block table from `block_table`).
PagedKvView MakePagedKvView(const PageGeometry& geometry, int layer, const HeadRun& run, const PagedKvPool& pool,
                            const int32_t* block_table, int32_t block_table_stride);

// Validation (also done by every entry point). Checks pointers, shapes, GQA ratio, lengths, the block
// table against the pool and, for extend, q_indptr.
KernelStatus ValidateAttention(const DecodeParams& p);
KernelStatus ValidateAttention(const ExtendParams& p);

// Effective softmax scale.
inline float SoftmaxScale(float sm_scale, int head_dim) {
  return sm_scale != 0.0f ? sm_scale : 1.0f / __builtin_sqrtf(static_cast<float>(head_dim));
}

// The CPU reference: scalar, fp64 accumulation, every format and grouping. The definition of correct.
KernelStatus PagedDecodeRef(const DecodeParams& p);
KernelStatus PagedExtendRef(const ExtendParams& p);

// The CPU fast path (the host device's Attend): dequantizes each block once per KV head and serves all
// query heads of the group from it, fp32 online softmax, work split over up to `threads` threads.
KernelStatus PagedDecodeCpu(const DecodeParams& p, int threads = 1);
KernelStatus PagedExtendCpu(const ExtendParams& p, int threads = 1);

}  // namespace kvtier
