// Calibration statistics for static (calibrated) KV scales (docs/calibration.md): per (layer, K|V,
// kv head, channel) the minimum and maximum of the finite values seen, and how many tokens were seen.
// Values are read from activation pages (fp16/bf16, the layout's activation geometry), so the same code
// serves every device. Method "minmax", symmetric: scale = max(|min|, |max|) / 127 (the int8 scale),
// floored at kMinStaticScale so that a channel that was always zero still gets a usable scale.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/page_geometry.h"
#include "kernels/status.h"

namespace kvtier {

// The smallest scale a calibration exports: the smallest positive fp16 (2^-24).
inline constexpr float kMinStaticScale = 5.9604644775390625e-8f;

class CalibrationStats {
 public:
  CalibrationStats() = default;
  explicit CalibrationStats(const LayoutShape& shape);

  const LayoutShape& shape() const { return shape_; }
  uint64_t tokens() const { return tokens_; }
  // Index of (layer, op, head, channel) in lo()/hi(): PageGeometry segment order, then channel.
  size_t Index(int layer, Operand op, int head, int channel) const {
    return static_cast<size_t>(PageGeometry::SegmentIndex(shape_, layer, op, head)) * shape_.head_dim + channel;
  }
  const std::vector<float>& lo() const { return lo_; }  // +inf where no finite value was seen
  const std::vector<float>& hi() const { return hi_; }  // -inf likewise

  // Adds `pages` activation pages (geometry `activation`: fp16/bf16 segments of this shape); each page
  // counts block_size tokens. NaN/Inf values are skipped (as in quantization).
  KernelStatus AddPages(const PageGeometry& activation, std::span<const uint8_t* const> pages);
  void Merge(const CalibrationStats& other);

  // max(|lo|, |hi|) / 127 per (segment, channel), floored at kMinStaticScale.
  std::vector<float> SymmetricInt8Scales() const;

 private:
  LayoutShape shape_;
  std::vector<float> lo_, hi_;
  uint64_t tokens_ = 0;
};

}  // namespace kvtier
