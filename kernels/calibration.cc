#include "kernels/calibration.h"

#include <cmath>

#include "kernels/format.h"
#include "kernels/segment.h"

namespace kvtier {

CalibrationStats::CalibrationStats(const LayoutShape& shape)
    : shape_(shape),
      lo_(static_cast<size_t>(shape.num_layers) * 2 * shape.num_kv_heads * shape.head_dim, __builtin_inff()),
      hi_(lo_.size(), -__builtin_inff()) {}

KernelStatus CalibrationStats::AddPages(const PageGeometry& activation, std::span<const uint8_t* const> pages) {
  const LayoutShape& s = activation.shape();
  if (s.num_layers != shape_.num_layers || s.num_kv_heads != shape_.num_kv_heads || s.head_dim != shape_.head_dim)
    return InvalidArgument("calibration: page shape differs from the calibrated layout's");
  const SegmentDims d = activation.dims();
  for (const uint8_t* page : pages) {
    if (page == nullptr) return InvalidArgument("calibration: null page");
    for (int seg = 0; seg < activation.num_segments(); ++seg) {
      const SegmentPlacement& p = activation.segment(seg);
      if (p.param_bytes != 0 || (p.codec.format != Format::kFp16 && p.codec.format != Format::kBf16))
        return InvalidArgument("calibration reads fp16/bf16 activation pages only");
      const uint8_t* data = page + p.data_offset;
      float* lo = lo_.data() + static_cast<size_t>(seg) * d.channels;
      float* hi = hi_.data() + static_cast<size_t>(seg) * d.channels;
      const bool bf16 = p.codec.format == Format::kBf16;
      for (int t = 0; t < d.tokens; ++t)
        for (int ch = 0; ch < d.channels; ++ch) {
          uint16_t bits;
          std::memcpy(&bits, data + 2 * (static_cast<size_t>(t) * d.channels + ch), 2);
          const float x = bf16 ? Bf16ToFloat(bits) : HalfToFloat(bits);
          if (!(std::fabs(x) <= 3.402823466e38f)) continue;
          lo[ch] = x < lo[ch] ? x : lo[ch];
          hi[ch] = x > hi[ch] ? x : hi[ch];
        }
    }
    tokens_ += static_cast<uint64_t>(d.tokens);
  }
  return KernelStatus::Ok();
}

void CalibrationStats::Merge(const CalibrationStats& o) {
  for (size_t i = 0; i < lo_.size() && i < o.lo_.size(); ++i) {
    lo_[i] = std::fmin(lo_[i], o.lo_[i]);
    hi_[i] = std::fmax(hi_[i], o.hi_[i]);
  }
  tokens_ += o.tokens_;
}

std::vector<float> CalibrationStats::SymmetricInt8Scales() const {
  std::vector<float> out(lo_.size());
  for (size_t i = 0; i < out.size(); ++i) {
    const float m = lo_[i] <= hi_[i] ? std::fmax(std::fabs(lo_[i]), std::fabs(hi_[i])) : 0.0f;
    out[i] = std::fmax(m / 127.0f, kMinStaticScale);
  }
  return out;
}

}  // namespace kvtier
