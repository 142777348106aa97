// PageGeometry: where each segment of a page lives. The only code that turns (layer, K|V, head) into
// byte offsets; everything else (codecs, movers, attention views) asks it.
//
// A page is one block of one sequence for all layers of a layout. Its data area is laid out
//   for layer in 0..L-1: for op in (K, V): for head in 0..H-1: segment data ([tokens][channels] codes)
// so one layer's K and V of one block are contiguous and one DMA moves a whole page. The parameter area
// (scales/offsets, page-table data) has the same order. Every segment starts 16-byte aligned.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/format.h"
#include "kernels/segment.h"
#include "kernels/status.h"

namespace kvtier {

// What an engine registers per model (the precision policy is resolved into segment codecs separately).
struct LayoutShape {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;  // tokens per block
  friend bool operator==(const LayoutShape&, const LayoutShape&) = default;
};

inline constexpr int32_t kMaxLayers = 1024;
inline constexpr int32_t kMaxKvHeads = 256;

// Accepts head_dim in {64, 96, 128, 256}, block_size in {16, 32, 64}, 1..1024 layers, 1..256 KV heads.
KernelStatus ValidateShape(const LayoutShape& shape);
// Accepts a codec valid for `format` with the given dims (grouping allowed for the format, group size
// dividing head_dim, at most 1024 groups).
KernelStatus ValidateCodec(const SegmentCodec& codec, SegmentDims dims);

struct SegmentPlacement {
  SegmentCodec codec;
  uint64_t data_offset = 0;   // from the start of the page's data
  uint32_t data_bytes = 0;
  uint32_t param_offset = 0;  // from the start of the page's parameter record
  uint32_t param_bytes = 0;
};

class PageGeometry {
 public:
  using CodecFn = std::function<SegmentCodec(int layer, Operand op, int head)>;

  static KernelOr<PageGeometry> Create(const LayoutShape& shape, const CodecFn& codec_of);
  // Every layer and head uses `key` for K and `value` for V.
  static KernelOr<PageGeometry> Uniform(const LayoutShape& shape, SegmentCodec key, SegmentCodec value);

  const LayoutShape& shape() const { return shape_; }
  SegmentDims dims() const { return {shape_.block_size, shape_.head_dim}; }
  uint64_t page_bytes() const { return page_bytes_; }
  uint32_t param_bytes() const { return param_bytes_; }
  int num_segments() const { return static_cast<int>(segments_.size()); }

  static int SegmentIndex(const LayoutShape& s, int layer, Operand op, int head) {
    return (layer * 2 + static_cast<int>(op)) * s.num_kv_heads + head;
  }
  const SegmentPlacement& segment(int index) const { return segments_[index]; }
  const SegmentPlacement& segment(int layer, Operand op, int head) const {
    return segments_[SegmentIndex(shape_, layer, op, head)];
  }
  const std::vector<SegmentPlacement>& segments() const { return segments_; }

  // Human-readable summary, e.g. "32L x 8H x 128D x 16T: page 2097152 B, params 0 B".
  std::string DebugString() const;

 private:
  LayoutShape shape_;
  std::vector<SegmentPlacement> segments_;
  uint64_t page_bytes_ = 0;
  uint32_t param_bytes_ = 0;
};

}  // namespace kvtier
