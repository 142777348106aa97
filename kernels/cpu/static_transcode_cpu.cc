// Static-scale transcode, host fast path: the vectorised per-segment code of transcode_fast_impl.h for
// ordinary segments (included here into this file's own namespaces, as transcode_cpu.cc does) plus
// vectorised static-scale encode/decode, compiled twice (AVX2 + FMA + F16C chosen at run time, and the
// baseline ISA). Same bytes and clip counts as TranscodePageStaticRef.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "kernels/cpu/avx2_target.h"
#include "kernels/format.h"
#include "kernels/segment.h"
#include "kernels/static_codec.h"
#include "kernels/static_transcode.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KVTIER_HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

// transcode_fast_impl.h's whole-page function is not used here (TranscodeStaticPage replaces it).
#pragma GCC diagnostic ignored "-Wunused-function"

namespace kvtier {

// The static-scale additions, included after transcode_fast_impl.h in each ISA namespace.
#define KVTIER_STATIC_FAST_IMPL                                                                                    \
  template <Format F>                                                                                              \
  static void DecodeStatic(SegmentDims d, const uint8_t* data, const float* s, float* out) {                       \
    float lut[256];                                                                                                \
    if constexpr (F != Format::kInt8)                                                                              \
      for (int code = 0; code < 256; ++code)                                                                       \
        lut[code] = FormatTraits<F>::Decode(static_cast<uint32_t>(code), QParams{1.0f, 1.0f, 0.0f});               \
    for (int t = 0; t < d.tokens; ++t) {                                                                           \
      const int first = t * d.channels;                                                                            \
      for (int k = 0; k < d.channels; ++k) out[first + k] = DecodeOne<F>(data, first + k, lut, s[k], 0.0f);        \
    }                                                                                                              \
  }                                                                                                                \
  template <Format F>                                                                                              \
  static uint64_t EncodeStatic(SegmentDims d, const float* v, const float* s, uint8_t* data) {                     \
    float inv[256], zero[256];                                                                                     \
    for (int k = 0; k < d.channels; ++k) inv[k] = StaticParams(s[k]).inv_scale, zero[k] = 0.0f;                   \
    uint32_t clipped = 0;                                                                                          \
    for (int t = 0; t < d.tokens; ++t) {                                                                           \
      const float* row = v + t * d.channels;                                                                       \
      for (int k = 0; k < d.channels; ++k) clipped += StaticClipped<F>(row[k], inv[k]);                            \
      EncodeRun<F>(row, d.channels, inv, zero, data, t * d.channels);                                              \
    }                                                                                                              \
    return clipped;                                                                                                \
  }                                                                                                                \
  static uint64_t TranscodeStaticPage(const PageGeometry& src, PageView in, const PageGeometry& dst,               \
                                      MutablePageView out, const float* scales, float* values) {                   \
    const SegmentDims dims = src.dims();                                                                           \
    uint64_t clips = 0;                                                                                            \
    for (int s = 0; s < src.num_segments(); ++s) {                                                                 \
      const SegmentPlacement& a = src.segment(s);                                                                  \
      const SegmentPlacement& b = dst.segment(s);                                                                  \
      const uint8_t* a_params = in.params ? in.params + a.param_offset : nullptr;                                  \
      uint8_t* b_params = out.params ? out.params + b.param_offset : nullptr;                                      \
      const float* seg_scales = scales + static_cast<size_t>(s) * dims.channels;                                   \
      if (a.codec == b.codec) {                                                                                    \
        std::memcpy(out.data + b.data_offset, in.data + a.data_offset, a.data_bytes);                              \
        if (a.param_bytes) std::memcpy(b_params, a_params, a.param_bytes);                                         \
        continue;                                                                                                  \
      }                                                                                                            \
      DispatchFormat(a.codec.format, [&](auto tag) {                                                               \
        constexpr Format F = decltype(tag)::kFormat;                                                               \
        if constexpr (kStaticCapable<F>)                                                                           \
          if (a.codec.grouping == Grouping::kStaticChannel) {                                                      \
            DecodeStatic<F>(dims, in.data + a.data_offset, seg_scales, values);                                    \
            return;                                                                                                \
          }                                                                                                        \
        DecodeSegment<F>(a.codec, dims, in.data + a.data_offset, a_params, values);                                \
      });                                                                                                          \
      DispatchFormat(b.codec.format, [&](auto tag) {                                                               \
        constexpr Format F = decltype(tag)::kFormat;                                                               \
        if constexpr (kStaticCapable<F>)                                                                           \
          if (b.codec.grouping == Grouping::kStaticChannel) {                                                      \
            clips += EncodeStatic<F>(dims, values, seg_scales, out.data + b.data_offset);                          \
            return;                                                                                                \
          }                                                                                                        \
        EncodeSegment<F>(b.codec, dims, values, out.data + b.data_offset, b_params);                               \
      });                                                                                                          \
    }                                                                                                              \
    return clips;                                                                                                  \
  }

namespace static_portable {
#include "kernels/cpu/transcode_fast_impl.h"
KVTIER_STATIC_FAST_IMPL
}  // namespace static_portable

#if defined(KVTIER_HAVE_AVX2_PATH)
KVTIER_AVX2_BEGIN
#define KVTIER_FAST_F16C 1
namespace static_avx2 {
#include "kernels/cpu/transcode_fast_impl.h"
KVTIER_STATIC_FAST_IMPL
}  // namespace static_avx2
#undef KVTIER_FAST_F16C
KVTIER_AVX2_END
#endif
#undef KVTIER_STATIC_FAST_IMPL

namespace {

using StaticPageFn = uint64_t (*)(const PageGeometry&, PageView, const PageGeometry&, MutablePageView, const float*,
                                  float*);

StaticPageFn SelectStaticPath(CpuPath path) {
#if defined(KVTIER_HAVE_AVX2_PATH)
  static const bool has_avx2 = CpuHasAvx2FmaF16c();
  if (path == CpuPath::kBest && has_avx2) return static_avx2::TranscodeStaticPage;
#else
  (void)path;
#endif
  return static_portable::TranscodeStaticPage;
}

}  // namespace

KernelStatus TranscodePagesStaticCpu(const PageGeometry& src, std::span<const PageView> in, const PageGeometry& dst,
                                     std::span<const MutablePageView> out, std::span<const float> scales,
                                     uint64_t* clipped, int threads, CpuPath path) {
  if (in.size() != out.size()) return InvalidArgument("transcode batch: input and output counts differ");
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckStaticTranscode(src, dst, scales));
  for (size_t i = 0; i < in.size(); ++i)
    if ((src.param_bytes() && !in[i].params) || (dst.param_bytes() && !out[i].params) || !in[i].data || !out[i].data)
      return InvalidArgument("transcode batch: page " + std::to_string(i) + " lacks its data or parameter record");
  const StaticPageFn fn = SelectStaticPath(path);
  const int n = static_cast<int>(in.size());
  const int workers = std::max(1, std::min(threads, n));
  const size_t values = static_cast<size_t>(src.dims().tokens) * src.dims().channels;
  std::atomic<int> next{0};
  std::atomic<uint64_t> clips{0};
  auto work = [&] {
    std::unique_ptr<float[]> buf(new float[values]);
    uint64_t mine = 0;
    for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1))
      mine += fn(src, in[i], dst, out[i], scales.data(), buf.get());
    clips.fetch_add(mine);
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (clipped) *clipped += clips.load();
  return KernelStatus::Ok();
}

}  // namespace kvtier
