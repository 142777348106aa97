// Scalar reference paged attention: the definition of correct. Each query row gathers its sequence's
// visible K/V through the paged view, decodes it with the reference codec (FormatTraits), and computes
// softmax(scale * q K^T) V in double precision. Slow by design; used by tests and as a fallback.
#include <cmath>
#include <vector>

#include "kernels/attention/attention.h"
#include "kernels/attention/attention_internal.h"

namespace kvtier {
namespace {

KernelStatus RunRef(const AttentionJob& j) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateJob(j));
  const PageGeometry& g = *j.geometry;
  const LayoutShape& s = g.shape();
  const int D = s.head_dim, bs = s.block_size;
  const int group = j.num_q_heads / s.num_kv_heads;
  std::vector<float> seg(static_cast<size_t>(bs) * D);
  for (const HeadRun& run : HeadRunsOf(g, j.layer)) {
    const PagedKvView view = MakePagedKvView(g, j.layer, run, j.pool, j.batch.block_table, j.batch.block_table_stride);
    for (int seq = 0; seq < j.batch.num_seqs; ++seq) {
      const int len = j.batch.seq_lens[seq];
      const int blocks = (len + bs - 1) / bs;
      for (int h = 0; h < run.num_heads; ++h) {
        // Dequantized K and V of the whole sequence for this head.
        std::vector<float> k(static_cast<size_t>(blocks) * bs * D), v(k.size());
        for (int b = 0; b < blocks; ++b) {
          const int32_t slot = view.Slot(seq, b);
          DecodeSegment(run.key, g.dims(), view.KData(slot, h), view.KParams(slot, h), &k[size_t(b) * bs * D]);
          DecodeSegment(run.value, g.dims(), view.VData(slot, h), view.VParams(slot, h), &v[size_t(b) * bs * D]);
        }
        const int n = j.QCount(seq);
        for (int r = 0; r < n; ++r) {
          const int visible = len - n + r + 1;  // causal: positions 0 .. len - n + r
          const int64_t row = j.QBegin(seq) + r;
          for (int qh = (run.first_head + h) * group; qh < (run.first_head + h + 1) * group; ++qh) {
            const int64_t qbase = (row * j.num_q_heads + qh) * D;
            std::vector<double> score(visible);
            double mx = -INFINITY;
            for (int t = 0; t < visible; ++t) {
              double dot = 0;
              for (int c = 0; c < D; ++c) dot += double(LoadAct(j.q, j.dtype, qbase + c)) * k[size_t(t) * D + c];
              score[t] = dot * j.sm_scale;
              mx = std::fmax(mx, score[t]);
            }
            double sum = 0;
            for (int t = 0; t < visible; ++t) sum += (score[t] = std::exp(score[t] - mx));
            for (int c = 0; c < D; ++c) {
              double acc = 0;
              for (int t = 0; t < visible; ++t) acc += score[t] * v[size_t(t) * D + c];
              StoreAct(j.out, j.dtype, qbase + c, static_cast<float>(acc / sum));
            }
          }
        }
      }
    }
  }
  return KernelStatus::Ok();
}

}  // namespace

KernelStatus PagedDecodeRef(const DecodeParams& p) { return RunRef(JobOf(p)); }

KernelStatus PagedExtendRef(const ExtendParams& p) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateAttention(p));
  return RunRef(JobOf(p));
}

}  // namespace kvtier
