// Host fast path of paged attention (the host device's Attend).
//
// Work item = (head run, sequence, KV head). Each item walks its sequence block by block: it decodes the
// block's K and V segment once into fp32 (parameters loaded once per group, the same FormatTraits::Decode
// as the reference, so the decoded values are bit-identical), then updates an fp32 online-softmax state
// for every (query row, query head of the GQA group) from it. Inner loops are written over fixed-width
// partial sums so that the compiler vectorizes them without reassociating floating point. Items are
// spread over worker threads; each item writes disjoint output rows, so no locking is needed.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "kernels/attention/attention.h"
#include "kernels/attention/attention_internal.h"

namespace kvtier {
namespace {

template <Format F>
void DecodeSegmentFast(const SegmentCodec& c, SegmentDims d, const uint8_t* data, const uint8_t* params, float* out) {
  using T = FormatTraits<F>;
  const int n = d.tokens * d.channels;
  if constexpr (T::kParamBytes == 0) {
    for (int i = 0; i < n; ++i) out[i] = T::Decode(LoadCode<F>(data, i), QParams{});
  } else {
    const int groups = NumGroups(c, d);
    QParams qp[1024];
    const float seg_scale = LoadSegmentScale<F>(c, d, params);  // two-level formats (fp4_e2m1); else 0
    for (int gi = 0; gi < groups; ++gi) qp[gi] = LoadGroupParams<F>(params + gi * T::kParamBytes, seg_scale);
    for (int t = 0; t < d.tokens; ++t)
      for (int ch = 0; ch < d.channels; ++ch) {
        const int i = t * d.channels + ch;
        out[i] = T::Decode(LoadCode<F>(data, i), qp[GroupOf(c, d, t, ch)]);
      }
  }
}

void DecodeSegmentAny(const SegmentCodec& c, SegmentDims d, const uint8_t* data, const uint8_t* params, float* out) {
  DispatchFormat(c.format, [&](auto tag) { DecodeSegmentFast<decltype(tag)::kFormat>(c, d, data, params, out); });
}

inline float Dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

struct Item {
  int run;
  int seq;
  int head;  // within the run
};

// Online-softmax state of one (query row, query head).
struct RowState {
  float m = -INFINITY;
  float l = 0.0f;
};

void RunItem(const AttentionJob& j, const HeadRun& run, const PagedKvView& view, const Item& it) {
  const PageGeometry& g = *j.geometry;
  const int D = g.shape().head_dim, bs = g.shape().block_size;
  const int group = j.num_q_heads / g.shape().num_kv_heads;
  const int len = j.batch.seq_lens[it.seq];
  const int n = j.QCount(it.seq);
  const int64_t row0 = j.QBegin(it.seq);
  const int qh0 = (run.first_head + it.head) * group;
  const int nq = n * group;  // (row, head) pairs, index r * group + gq

  std::vector<float> q(static_cast<size_t>(nq) * D), o(q.size(), 0.0f), kb(size_t(bs) * D), vb(kb.size());
  std::vector<float> p(bs);
  std::vector<RowState> st(nq);
  for (int r = 0; r < n; ++r)
    for (int gq = 0; gq < group; ++gq) {
      const int64_t base = ((row0 + r) * j.num_q_heads + qh0 + gq) * D;
      for (int c = 0; c < D; ++c) q[size_t(r * group + gq) * D + c] = LoadAct(j.q, j.dtype, base + c) * j.sm_scale;
    }
  const int blocks = (len + bs - 1) / bs;
  for (int b = 0; b < blocks; ++b) {
    const int t0 = b * bs;
    // Rows that see none of this block (causal) skip it; the first visible row is r = t0 - (len - n).
    const int first_row = std::max(0, t0 - (len - n));
    if (first_row >= n) break;
    const int32_t slot = view.Slot(it.seq, b);
    DecodeSegmentAny(run.key, g.dims(), view.KData(slot, it.head), view.KParams(slot, it.head), kb.data());
    DecodeSegmentAny(run.value, g.dims(), view.VData(slot, it.head), view.VParams(slot, it.head), vb.data());
    for (int r = first_row; r < n; ++r) {
      const int visible = std::min(bs, len - n + r + 1 - t0);  // tokens of this block row r sees
      for (int gq = 0; gq < group; ++gq) {
        const int qi = r * group + gq;
        const float* qv = &q[size_t(qi) * D];
        float mx = -INFINITY;
        for (int t = 0; t < visible; ++t) mx = std::max(mx, p[t] = Dot(qv, &kb[size_t(t) * D], D));
        RowState& s = st[qi];
        const float m_new = std::max(s.m, mx);
        const float alpha = s.m == -INFINITY ? 0.0f : std::exp(s.m - m_new);
        float* ov = &o[size_t(qi) * D];
        float sum = 0.0f;
        for (int c = 0; c < D; ++c) ov[c] *= alpha;
        for (int t = 0; t < visible; ++t) {
          const float w = std::exp(p[t] - m_new);
          sum += w;
          const float* vv = &vb[size_t(t) * D];
          for (int c = 0; c < D; ++c) ov[c] += w * vv[c];
        }
        s.l = s.l * alpha + sum;
        s.m = m_new;
      }
    }
  }
  for (int r = 0; r < n; ++r)
    for (int gq = 0; gq < group; ++gq) {
      const int qi = r * group + gq;
      const float inv = 1.0f / st[qi].l;
      const int64_t base = ((row0 + r) * j.num_q_heads + qh0 + gq) * D;
      for (int c = 0; c < D; ++c) StoreAct(j.out, j.dtype, base + c, o[size_t(qi) * D + c] * inv);
    }
}

KernelStatus RunCpu(const AttentionJob& j, int threads) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateJob(j));
  const std::vector<HeadRun> runs = HeadRunsOf(*j.geometry, j.layer);
  std::vector<PagedKvView> views;
  std::vector<Item> items;
  for (int r = 0; r < static_cast<int>(runs.size()); ++r) {
    views.push_back(
        MakePagedKvView(*j.geometry, j.layer, runs[r], j.pool, j.batch.block_table, j.batch.block_table_stride));
    for (int s = 0; s < j.batch.num_seqs; ++s)
      for (int h = 0; h < runs[r].num_heads; ++h) items.push_back({r, s, h});
  }
  // Longest sequences first, so that the tail of the schedule is short items.
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    return j.batch.seq_lens[a.seq] * int64_t(j.QCount(a.seq)) > j.batch.seq_lens[b.seq] * int64_t(j.QCount(b.seq));
  });
  const int n = static_cast<int>(items.size());
  std::atomic<int> next{0};
  auto work = [&] {
    for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1))
      RunItem(j, runs[items[i].run], views[items[i].run], items[i]);
  };
  const int workers = std::max(1, std::min(threads, n));
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return KernelStatus::Ok();
}

}  // namespace

KernelStatus PagedDecodeCpu(const DecodeParams& p, int threads) { return RunCpu(JobOf(p), threads); }

KernelStatus PagedExtendCpu(const ExtendParams& p, int threads) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateAttention(p));
  return RunCpu(JobOf(p), threads);
}

}  // namespace kvtier
