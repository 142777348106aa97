// Static-scale transcode: the scalar reference (kernels/static_transcode.h) and the checks shared with
// the fast path.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/segment.h"
#include "kernels/static_codec.h"
#include "kernels/static_transcode.h"

namespace kvtier {

bool HasStaticSegments(const PageGeometry& g) {
  for (const SegmentPlacement& p : g.segments())
    if (p.codec.grouping == Grouping::kStaticChannel) return true;
  return false;
}

float StaticCodeLimit(Format f) {
  return DispatchFormat(f, [](auto tag) { return StaticLimit<decltype(tag)::kFormat>(); });
}

KernelStatus CheckStaticTranscode(const PageGeometry& src, const PageGeometry& dst, std::span<const float> scales) {
  if (!(src.shape() == dst.shape())) return InvalidArgument("transcode between pages of different shapes");
  const size_t channels = static_cast<size_t>(src.dims().channels);
  if (scales.size() != static_cast<size_t>(src.num_segments()) * channels)
    return InvalidArgument("static scale table has " + std::to_string(scales.size()) + " values, the layout needs " +
                           std::to_string(static_cast<size_t>(src.num_segments()) * channels));
  for (const PageGeometry* g : {&src, &dst})
    for (int s = 0; s < g->num_segments(); ++s) {
      const SegmentCodec& c = g->segment(s).codec;
      if (c.grouping != Grouping::kStaticChannel) continue;
      if (c.format != Format::kInt8 && c.format != Format::kFp8E4m3 && c.format != Format::kFp8E5m2)
        return InvalidArgument("static scales need int8 or fp8, not " + std::string(GetFormatInfo(c.format).name));
      for (size_t ch = 0; ch < channels; ++ch) {
        const float v = scales[s * channels + ch];
        if (!(v > 0.0f) || !std::isfinite(v))
          return InvalidArgument("static scale of segment " + std::to_string(s) + " channel " + std::to_string(ch) +
                                 " is not a positive finite number");
      }
    }
  return KernelStatus::Ok();
}

namespace {

template <Format F>
void DecodeStaticRef(SegmentDims d, const uint8_t* data, const float* s, float* values) {
  using T = FormatTraits<F>;
  for (int t = 0; t < d.tokens; ++t)
    for (int ch = 0; ch < d.channels; ++ch) {
      const int i = t * d.channels + ch;
      values[i] = T::Decode(LoadCode<F>(data, i), StaticParams(s[ch]));
    }
}

template <Format F>
uint64_t EncodeStaticRef(SegmentDims d, const float* values, const float* s, uint8_t* data) {
  using T = FormatTraits<F>;
  uint64_t clipped = 0;
  for (int t = 0; t < d.tokens; ++t)
    for (int ch = 0; ch < d.channels; ++ch) {
      const int i = t * d.channels + ch;
      const QParams p = StaticParams(s[ch]);
      clipped += StaticClipped<F>(values[i], p.inv_scale);
      StoreCode<F>(data, i, T::Encode(values[i], p));
    }
  return clipped;
}

}  // namespace

KernelStatus TranscodePageStaticRef(const PageGeometry& src, PageView in, const PageGeometry& dst, MutablePageView out,
                                    std::span<const float> scales, uint64_t* clipped) {
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckStaticTranscode(src, dst, scales));
  const SegmentDims dims = src.dims();
  std::vector<float> values(static_cast<size_t>(dims.tokens) * dims.channels);
  uint64_t clips = 0;
  for (int s = 0; s < src.num_segments(); ++s) {
    const SegmentPlacement& a = src.segment(s);
    const SegmentPlacement& b = dst.segment(s);
    const uint8_t* a_params = in.params ? in.params + a.param_offset : nullptr;
    uint8_t* b_params = out.params ? out.params + b.param_offset : nullptr;
    if ((a.param_bytes && !a_params) || (b.param_bytes && !b_params))
      return InvalidArgument("page parameter record missing for a quantized segment");
    const float* seg_scales = scales.data() + static_cast<size_t>(s) * dims.channels;
    if (a.codec == b.codec) {
      std::memcpy(out.data + b.data_offset, in.data + a.data_offset, a.data_bytes);
      if (a.param_bytes) std::memcpy(b_params, a_params, a.param_bytes);
      continue;
    }
    DispatchFormat(a.codec.format, [&](auto tag) {
      constexpr Format F = decltype(tag)::kFormat;
      if constexpr (kStaticCapable<F>)
        if (a.codec.grouping == Grouping::kStaticChannel) {
          DecodeStaticRef<F>(dims, in.data + a.data_offset, seg_scales, values.data());
          return;
        }
      DequantizeSegmentRef<F>(a.codec, dims, in.data + a.data_offset, a_params, values.data());
    });
    DispatchFormat(b.codec.format, [&](auto tag) {
      constexpr Format F = decltype(tag)::kFormat;
      if constexpr (kStaticCapable<F>)
        if (b.codec.grouping == Grouping::kStaticChannel) {
          clips += EncodeStaticRef<F>(dims, values.data(), seg_scales, out.data + b.data_offset);
          return;
        }
      QuantizeSegmentRef<F>(b.codec, dims, values.data(), out.data + b.data_offset, b_params);
    });
  }
  if (clipped) *clipped += clips;
  return KernelStatus::Ok();
}

}  // namespace kvtier
