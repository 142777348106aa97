// C ABI over the attention host API (see kvtier_kernels_capi.h). Converts raw arguments into Params
// structs and KernelStatus into an int code plus a per-thread message; holds no other state.
#include "kernels/capi/kvtier_kernels_capi.h"

#include <string>
#include <vector>

#include "kernels/attention/attention.h"
#include "kernels/segment.h"
#if defined(KVTIER_WITH_CUDA)
#include "kernels/attention/attention_cuda.h"
#endif

struct kvtier_layout {
  kvtier::PageGeometry geometry;
};

namespace {

using kvtier::KernelStatus;

thread_local std::string g_last_error;

int Report(const KernelStatus& st) {
  g_last_error = st.ok() ? "" : st.message();
  return static_cast<int>(st.code());
}

template <class T>
const T* Ptr(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}

kvtier::PagedKvBatch Batch(int32_t num_seqs, uintptr_t lens, uintptr_t table, int32_t stride) {
  return {num_seqs, Ptr<int32_t>(lens), Ptr<int32_t>(table), stride};
}

int Create(kvtier::KernelOr<kvtier::PageGeometry> g, kvtier_layout** out) {
  if (out == nullptr) return Report(kvtier::InvalidArgument("out is null"));
  if (!g.ok()) return Report(g.status());
  *out = new kvtier_layout{std::move(g).value()};
  return Report(KernelStatus::Ok());
}

kvtier::DecodeParams Decode(const kvtier_layout* l, int32_t layer, uintptr_t data, uintptr_t params, int64_t slots,
                            kvtier::PagedKvBatch batch, int32_t hq, int32_t dtype, uintptr_t q, uintptr_t out,
                            float scale) {
  const kvtier::PageGeometry* g = l ? &l->geometry : nullptr;
  return {g,
          {Ptr<uint8_t>(data), Ptr<uint8_t>(params), slots},
          batch,
          layer,
          hq,
          g ? g->shape().head_dim : 0,
          static_cast<kvtier::ActDtype>(dtype),
          Ptr<void>(q),
          reinterpret_cast<void*>(out),
          scale};
}

kvtier::ExtendParams Extend(const kvtier_layout* l, int32_t layer, uintptr_t data, uintptr_t params, int64_t slots,
                            kvtier::PagedKvBatch batch, uintptr_t indptr, int32_t hq, int32_t dtype, uintptr_t q,
                            uintptr_t out, float scale) {
  const kvtier::PageGeometry* g = l ? &l->geometry : nullptr;
  return {g,
          {Ptr<uint8_t>(data), Ptr<uint8_t>(params), slots},
          batch,
          Ptr<int32_t>(indptr),
          layer,
          hq,
          g ? g->shape().head_dim : 0,
          static_cast<kvtier::ActDtype>(dtype),
          Ptr<void>(q),
          reinterpret_cast<void*>(out),
          scale};
}

bool BadDtype(int32_t dtype) { return dtype < 0 || dtype > 2; }

}  // namespace

extern "C" {

const char* kvtier_last_error(void) { return g_last_error.c_str(); }

int kvtier_layout_create(int32_t num_layers, int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
                         const char* k_format, const char* v_format, kvtier_layout** out) {
  const auto k = kvtier::ParseFormat(k_format ? k_format : "");
  const auto v = kvtier::ParseFormat(v_format ? v_format : "");
  if (!k || !v) return Report(kvtier::InvalidArgument("unknown format name"));
  return Create(kvtier::PageGeometry::Uniform({num_layers, num_kv_heads, head_dim, block_size},
                                              kvtier::DefaultCodec(*k, kvtier::Operand::kKey),
                                              kvtier::DefaultCodec(*v, kvtier::Operand::kValue)),
                out);
}

int kvtier_layout_create_mixed(int32_t num_layers, int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
                               const char* const* formats, kvtier_layout** out) {
  if (formats == nullptr || num_layers < 1 || num_kv_heads < 1 || num_layers > kvtier::kMaxLayers ||
      num_kv_heads > kvtier::kMaxKvHeads)
    return Report(kvtier::InvalidArgument("bad layout dimensions or null formats"));
  std::vector<kvtier::Format> parsed;
  for (int i = 0; i < num_layers * 2 * num_kv_heads; ++i) {
    const auto f = kvtier::ParseFormat(formats[i] ? formats[i] : "");
    if (!f) return Report(kvtier::InvalidArgument("unknown format name at index " + std::to_string(i)));
    parsed.push_back(*f);
  }
  return Create(kvtier::PageGeometry::Create({num_layers, num_kv_heads, head_dim, block_size},
                                             [&](int layer, kvtier::Operand op, int head) {
                                               const auto f =
                                                   parsed[(layer * 2 + static_cast<int>(op)) * num_kv_heads + head];
                                               return kvtier::DefaultCodec(f, op);
                                             }),
                out);
}

void kvtier_layout_destroy(kvtier_layout* layout) { delete layout; }

uint64_t kvtier_layout_page_bytes(const kvtier_layout* l) { return l ? l->geometry.page_bytes() : 0; }
uint32_t kvtier_layout_param_bytes(const kvtier_layout* l) { return l ? l->geometry.param_bytes() : 0; }

int kvtier_layout_segment(const kvtier_layout* l, int32_t layer, int32_t op, int32_t head, uint64_t* data_offset,
                          uint32_t* data_bytes, uint32_t* param_offset, uint32_t* param_bytes) {
  if (l == nullptr || layer < 0 || layer >= l->geometry.shape().num_layers || op < 0 || op > 1 || head < 0 ||
      head >= l->geometry.shape().num_kv_heads)
    return Report(kvtier::InvalidArgument("segment index out of range"));
  const auto& s = l->geometry.segment(layer, static_cast<kvtier::Operand>(op), head);
  if (data_offset) *data_offset = s.data_offset;
  if (data_bytes) *data_bytes = s.data_bytes;
  if (param_offset) *param_offset = s.param_offset;
  if (param_bytes) *param_bytes = s.param_bytes;
  return Report(KernelStatus::Ok());
}

int kvtier_quantize_segment_host(const kvtier_layout* l, int32_t layer, int32_t op, int32_t head, uintptr_t values,
                                 uintptr_t page_data, uintptr_t page_params) {
  uint64_t off = 0;
  uint32_t bytes = 0, poff = 0, pbytes = 0;
  if (int rc = kvtier_layout_segment(l, layer, op, head, &off, &bytes, &poff, &pbytes); rc != 0) return rc;
  if (values == 0 || page_data == 0 || (pbytes > 0 && page_params == 0))
    return Report(kvtier::InvalidArgument("null buffer"));
  const auto& s = l->geometry.segment(layer, static_cast<kvtier::Operand>(op), head);
  uint8_t* data = reinterpret_cast<uint8_t*>(page_data) + off;
  uint8_t* params = pbytes > 0 ? reinterpret_cast<uint8_t*>(page_params) + poff : nullptr;
  kvtier::DispatchFormat(s.codec.format, [&](auto tag) {
    kvtier::QuantizeSegmentRef<decltype(tag)::kFormat>(s.codec, l->geometry.dims(), Ptr<float>(values), data, params);
  });
  return Report(KernelStatus::Ok());
}

int kvtier_decode_cpu(const kvtier_layout* l, int32_t layer, uintptr_t data, uintptr_t params, int64_t num_slots,
                      int32_t num_seqs, uintptr_t lens, uintptr_t table, int32_t stride, int32_t hq, int32_t dtype,
                      uintptr_t q, uintptr_t out, float scale, int32_t threads) {
  if (BadDtype(dtype)) return Report(kvtier::InvalidArgument("bad dtype"));
  return Report(kvtier::PagedDecodeCpu(
      Decode(l, layer, data, params, num_slots, Batch(num_seqs, lens, table, stride), hq, dtype, q, out, scale),
      threads));
}

int kvtier_extend_cpu(const kvtier_layout* l, int32_t layer, uintptr_t data, uintptr_t params, int64_t num_slots,
                      int32_t num_seqs, uintptr_t lens, uintptr_t table, int32_t stride, uintptr_t indptr, int32_t hq,
                      int32_t dtype, uintptr_t q, uintptr_t out, float scale, int32_t threads) {
  if (BadDtype(dtype)) return Report(kvtier::InvalidArgument("bad dtype"));
  return Report(kvtier::PagedExtendCpu(
      Extend(l, layer, data, params, num_slots, Batch(num_seqs, lens, table, stride), indptr, hq, dtype, q, out, scale),
      threads));
}

#if defined(KVTIER_WITH_CUDA)

int kvtier_decode_cuda_workspace(const kvtier_layout* l, int32_t layer, int64_t num_slots, int32_t num_seqs,
                                 uintptr_t lens, uintptr_t table, int32_t stride, int32_t hq, uint64_t* bytes,
                                 int32_t* num_splits) {
  // Validation needs non-null buffers; planning reads none of them.
  static const uint8_t kDummy[16] = {};
  const uintptr_t dummy = reinterpret_cast<uintptr_t>(kDummy);
  auto plan = kvtier::PlanDecodeCuda(
      Decode(l, layer, dummy, dummy, num_slots, Batch(num_seqs, lens, table, stride), hq, 0, dummy, dummy, 0.0f));
  if (!plan.ok()) return Report(plan.status());
  if (bytes) *bytes = plan->workspace_bytes;
  if (num_splits) *num_splits = plan->num_splits;
  return Report(KernelStatus::Ok());
}

int kvtier_decode_cuda(const kvtier_layout* l, int32_t layer, uintptr_t data, uintptr_t params, int64_t num_slots,
                       int32_t num_seqs, uintptr_t lens, uintptr_t table, int32_t stride, uintptr_t lens_dev,
                       uintptr_t table_dev, int32_t hq, int32_t dtype, uintptr_t q, uintptr_t out, float scale,
                       uintptr_t workspace, uint64_t workspace_bytes, uintptr_t stream) {
  if (BadDtype(dtype)) return Report(kvtier::InvalidArgument("bad dtype"));
  const kvtier::CudaLaunch launch{{Ptr<int32_t>(lens_dev), Ptr<int32_t>(table_dev), nullptr},
                                  reinterpret_cast<void*>(workspace),
                                  workspace_bytes,
                                  reinterpret_cast<cudaStream_t>(stream)};
  return Report(kvtier::PagedDecodeCuda(
      Decode(l, layer, data, params, num_slots, Batch(num_seqs, lens, table, stride), hq, dtype, q, out, scale),
      launch));
}

int kvtier_extend_cuda(const kvtier_layout* l, int32_t layer, uintptr_t data, uintptr_t params, int64_t num_slots,
                       int32_t num_seqs, uintptr_t lens, uintptr_t table, int32_t stride, uintptr_t indptr,
                       uintptr_t lens_dev, uintptr_t table_dev, uintptr_t indptr_dev, int32_t hq, int32_t dtype,
                       uintptr_t q, uintptr_t out, float scale, uintptr_t stream) {
  if (BadDtype(dtype)) return Report(kvtier::InvalidArgument("bad dtype"));
  const kvtier::CudaLaunch launch{{Ptr<int32_t>(lens_dev), Ptr<int32_t>(table_dev), Ptr<int32_t>(indptr_dev)},
                                  nullptr,
                                  0,
                                  reinterpret_cast<cudaStream_t>(stream)};
  return Report(kvtier::PagedExtendCuda(
      Extend(l, layer, data, params, num_slots, Batch(num_seqs, lens, table, stride), indptr, hq, dtype, q, out, scale),
      launch));
}

#else  // !KVTIER_WITH_CUDA

int kvtier_decode_cuda_workspace(const kvtier_layout*, int32_t, int64_t, int32_t, uintptr_t, uintptr_t, int32_t,
                                 int32_t, uint64_t*, int32_t*) {
  return Report(kvtier::Unavailable("kvtier was built without CUDA"));
}
int kvtier_decode_cuda(const kvtier_layout*, int32_t, uintptr_t, uintptr_t, int64_t, int32_t, uintptr_t, uintptr_t,
                       int32_t, uintptr_t, uintptr_t, int32_t, int32_t, uintptr_t, uintptr_t, float, uintptr_t,
                       uint64_t, uintptr_t) {
  return Report(kvtier::Unavailable("kvtier was built without CUDA"));
}
int kvtier_extend_cuda(const kvtier_layout*, int32_t, uintptr_t, uintptr_t, int64_t, int32_t, uintptr_t, uintptr_t,
                       int32_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int32_t, int32_t, uintptr_t, uintptr_t,
                       float, uintptr_t) {
  return Report(kvtier::Unavailable("kvtier was built without CUDA"));
}

#endif

}  // extern "C"
