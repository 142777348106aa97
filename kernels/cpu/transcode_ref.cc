#include <cstring>
#include <vector>

#include "kernels/transcode.h"

namespace kvtier {

KernelStatus CheckTranscodable(const PageGeometry& src, const PageGeometry& dst) {
  if (!(src.shape() == dst.shape())) return InvalidArgument("transcode between pages of different shapes");
  for (const PageGeometry* g : {&src, &dst})
    for (const SegmentPlacement& p : g->segments())
      if (p.codec.grouping == Grouping::kStaticChannel)
        return InvalidArgument("static-scale segments need the static transcode (kernels/static_transcode.h)");
  return KernelStatus::Ok();
}

KernelStatus TranscodePageRef(const PageGeometry& src, PageView in, const PageGeometry& dst, MutablePageView out) {
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckTranscodable(src, dst));
  const SegmentDims dims = src.dims();
  std::vector<float> values(static_cast<size_t>(dims.tokens) * dims.channels);
  for (int s = 0; s < src.num_segments(); ++s) {
    const SegmentPlacement& a = src.segment(s);
    const SegmentPlacement& b = dst.segment(s);
    const uint8_t* a_params = in.params ? in.params + a.param_offset : nullptr;
    uint8_t* b_params = out.params ? out.params + b.param_offset : nullptr;
    if ((a.param_bytes && !a_params) || (b.param_bytes && !b_params))
      return InvalidArgument("page parameter record missing for a quantized segment");
    if (a.codec == b.codec) {
      std::memcpy(out.data + b.data_offset, in.data + a.data_offset, a.data_bytes);
      if (a.param_bytes) std::memcpy(b_params, a_params, a.param_bytes);
      continue;
    }
    DispatchFormat(a.codec.format, [&](auto tag) {
      DequantizeSegmentRef<decltype(tag)::kFormat>(a.codec, dims, in.data + a.data_offset, a_params, values.data());
    });
    DispatchFormat(b.codec.format, [&](auto tag) {
      QuantizeSegmentRef<decltype(tag)::kFormat>(b.codec, dims, values.data(), out.data + b.data_offset, b_params);
    });
  }
  return KernelStatus::Ok();
}

}  // namespace kvtier
