// Validation, head runs and view construction shared by the CPU and CUDA attention back ends.
#include "kernels/attention/attention.h"

#include <cstdio>
#include <string>

#include "kernels/attention/attention_internal.h"

namespace kvtier {
namespace {

std::string Fmt(const char* fmt, long long a, long long b = 0, long long c = 0) {
  char buf[200];
  std::snprintf(buf, sizeof buf, fmt, a, b, c);
  return buf;
}

}  // namespace

std::vector<HeadRun> HeadRunsOf(const PageGeometry& g, int layer) {
  std::vector<HeadRun> runs;
  for (int h = 0; h < g.shape().num_kv_heads; ++h) {
    const SegmentCodec k = g.segment(layer, Operand::kKey, h).codec;
    const SegmentCodec v = g.segment(layer, Operand::kValue, h).codec;
    if (!runs.empty() && runs.back().key == k && runs.back().value == v) {
      ++runs.back().num_heads;
    } else {
      runs.push_back({h, 1, k, v});
    }
  }
  return runs;
}

PagedKvView MakePagedKvView(const PageGeometry& g, int layer, const HeadRun& run, const PagedKvPool& pool,
                            const int32_t* block_table, int32_t block_table_stride) {
  PagedKvView v;
  v.data = pool.data;
  v.params = pool.params;
  v.page_bytes = g.page_bytes();
  v.param_bytes = g.param_bytes();
  v.block_table = block_table;
  v.block_table_stride = block_table_stride;
  v.block_size = g.shape().block_size;
  v.first_head = run.first_head;
  const SegmentPlacement& k0 = g.segment(layer, Operand::kKey, run.first_head);
  const SegmentPlacement& v0 = g.segment(layer, Operand::kValue, run.first_head);
  v.k_data_offset = k0.data_offset;
  v.v_data_offset = v0.data_offset;
  v.k_param_offset = k0.param_offset;
  v.v_param_offset = v0.param_offset;
  if (run.num_heads > 1) {
    // Equal codecs give equal, 16-byte aligned segment sizes: the stride is constant inside a run.
    const SegmentPlacement& k1 = g.segment(layer, Operand::kKey, run.first_head + 1);
    const SegmentPlacement& v1 = g.segment(layer, Operand::kValue, run.first_head + 1);
    v.k_data_stride = static_cast<uint32_t>(k1.data_offset - k0.data_offset);
    v.v_data_stride = static_cast<uint32_t>(v1.data_offset - v0.data_offset);
    v.k_param_stride = k1.param_offset - k0.param_offset;
    v.v_param_stride = v1.param_offset - v0.param_offset;
  }
  return v;
}

KernelStatus ValidateJob(const AttentionJob& j) {
  if (j.geometry == nullptr) return InvalidArgument("attention: geometry is null");
  const LayoutShape& s = j.geometry->shape();
  if (j.layer < 0 || j.layer >= s.num_layers)
    return InvalidArgument(Fmt("attention: layer=%lld outside the layout's %lld layers", j.layer, s.num_layers));
  if (j.head_dim != s.head_dim)
    return InvalidArgument(Fmt("attention: head_dim=%lld but the layout's is %lld", j.head_dim, s.head_dim));
  if (j.num_q_heads < 1 || j.num_q_heads % s.num_kv_heads != 0)
    return InvalidArgument(Fmt("attention: num_q_heads=%lld is not a positive multiple of num_kv_heads=%lld",
                               j.num_q_heads, s.num_kv_heads));
  if (static_cast<int>(j.dtype) > static_cast<int>(ActDtype::kFp32))
    return InvalidArgument("attention: unknown activation dtype");
  if (j.q == nullptr || j.out == nullptr) return InvalidArgument("attention: q or out is null");
  if (j.pool.data == nullptr || j.pool.num_slots < 1) return InvalidArgument("attention: empty pool");
  if (j.geometry->param_bytes() > 0 && j.pool.params == nullptr)
    return InvalidArgument("attention: the layout has quantization parameters but the parameter mirror is null");
  const PagedKvBatch& b = j.batch;
  if (b.num_seqs < 1) return InvalidArgument("attention: empty batch");
  if (b.seq_lens == nullptr || b.block_table == nullptr)
    return InvalidArgument("attention: seq_lens or block_table is null");
  if (b.block_table_stride < 1) return InvalidArgument("attention: block_table_stride < 1");
  const int64_t max_tokens = static_cast<int64_t>(b.block_table_stride) * s.block_size;
  for (int i = 0; i < b.num_seqs; ++i) {
    const int32_t len = b.seq_lens[i];
    if (len < 1) return InvalidArgument(Fmt("attention: sequence %lld has length %lld", i, len));
    if (len > max_tokens)
      return InvalidArgument(Fmt("attention: sequence %lld has %lld tokens, more than its block-table row holds (%lld)",
                                 i, len, max_tokens));
    const int32_t blocks = (len + s.block_size - 1) / s.block_size;
    const int32_t* row = b.block_table + static_cast<int64_t>(i) * b.block_table_stride;
    for (int k = 0; k < blocks; ++k)
      if (row[k] < 0 || row[k] >= j.pool.num_slots)
        return OutOfRange(Fmt("attention: sequence %lld block %lld names slot %lld outside the pool", i, k, row[k]) +
                          Fmt(" (num_slots=%lld)", j.pool.num_slots));
  }
  if (j.q_indptr != nullptr) {
    if (j.q_indptr[0] != 0) return InvalidArgument("attention: q_indptr[0] != 0");
    for (int i = 0; i < b.num_seqs; ++i) {
      const int64_t n = static_cast<int64_t>(j.q_indptr[i + 1]) - j.q_indptr[i];
      if (n < 1 || n > b.seq_lens[i])
        return InvalidArgument(
            Fmt("attention: sequence %lld has %lld new tokens but length %lld", i, n, b.seq_lens[i]));
    }
  }
  return KernelStatus::Ok();
}

AttentionJob JobOf(const DecodeParams& p) {
  return {p.geometry,
          p.pool,
          p.batch,
          nullptr,
          p.layer,
          p.num_q_heads,
          p.head_dim,
          p.dtype,
          p.q,
          p.out,
          SoftmaxScale(p.sm_scale, p.head_dim > 0 ? p.head_dim : 1)};
}

AttentionJob JobOf(const ExtendParams& p) {
  return {p.geometry,
          p.pool,
          p.batch,
          p.q_indptr,
          p.layer,
          p.num_q_heads,
          p.head_dim,
          p.dtype,
          p.q,
          p.out,
          SoftmaxScale(p.sm_scale, p.head_dim > 0 ? p.head_dim : 1)};
}

KernelStatus ValidateAttention(const DecodeParams& p) { return ValidateJob(JobOf(p)); }

KernelStatus ValidateAttention(const ExtendParams& p) {
  if (p.q_indptr == nullptr) return InvalidArgument("attention: extend needs q_indptr");
  return ValidateJob(JobOf(p));
}

}  // namespace kvtier
