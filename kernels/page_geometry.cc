#include "kernels/page_geometry.h"

#include <cstdio>

namespace kvtier {
namespace {

constexpr uint64_t kAlign = 16;
uint64_t AlignUp(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

std::string Str(const char* fmt, long long a, long long b = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, fmt, a, b);
  return buf;
}

}  // namespace

KernelStatus ValidateShape(const LayoutShape& s) {
  if (s.num_layers < 1 || s.num_layers > kMaxLayers)
    return InvalidArgument(Str("num_layers=%lld outside [1, 1024]", s.num_layers));
  if (s.num_kv_heads < 1 || s.num_kv_heads > kMaxKvHeads)
    return InvalidArgument(Str("num_kv_heads=%lld outside [1, 256]", s.num_kv_heads));
  if (s.head_dim != 64 && s.head_dim != 96 && s.head_dim != 128 && s.head_dim != 256)
    return InvalidArgument(Str("head_dim=%lld unsupported (64, 96, 128, 256)", s.head_dim));
  if (s.block_size != 16 && s.block_size != 32 && s.block_size != 64)
    return InvalidArgument(Str("block_size=%lld unsupported (16, 32, 64)", s.block_size));
  return KernelStatus::Ok();
}

KernelStatus ValidateCodec(const SegmentCodec& c, SegmentDims d) {
  const auto fi = static_cast<int>(c.format);
  if (fi < 0 || fi >= kNumFormats) return InvalidArgument(Str("unknown format id %lld", fi));
  const std::string name(GetFormatInfo(c.format).name);
  switch (c.format) {
    case Format::kFp16:
    case Format::kBf16:
      if (c.grouping != Grouping::kNone) return InvalidArgument(name + " takes no grouping");
      return KernelStatus::Ok();
    case Format::kFp8E4m3:
    case Format::kFp8E5m2:
      if (c.grouping == Grouping::kStaticChannel) return KernelStatus::Ok();
      if (c.grouping != Grouping::kPerSegment) return InvalidArgument(name + " needs grouping per_segment");
      return KernelStatus::Ok();
    case Format::kFp4E2m1:
      if (c.grouping != Grouping::kPerChannel && c.grouping != Grouping::kPerToken)
        return InvalidArgument(name + " needs grouping per_channel or per_token");
      if (c.group_size != FormatTraits<Format::kFp4E2m1>::kGroupValues)
        return InvalidArgument(name + Str(": group_size=%lld, must be 16 (one E4M3 scale per 16 values)", c.group_size));
      if (d.tokens % 16 != 0 || d.channels % 16 != 0)
        return InvalidArgument(name + Str(": block_size=%lld and head_dim=%lld must be multiples of 16", d.tokens,
                                          d.channels));
      if (NumGroups(c, d) > 1024) return InvalidArgument(name + ": more than 1024 groups per segment");
      return KernelStatus::Ok();
    case Format::kInt8:
    case Format::kInt4:
      if (c.grouping == Grouping::kStaticChannel && c.format == Format::kInt8) return KernelStatus::Ok();
      if (c.grouping != Grouping::kPerChannel && c.grouping != Grouping::kPerToken)
        return InvalidArgument(name + " needs grouping per_channel or per_token");
      if (c.grouping == Grouping::kPerChannel && c.group_size != 0)
        return InvalidArgument(name + ": per_channel groups span the whole block (group_size must be 0)");
      if (c.grouping == Grouping::kPerToken && c.group_size != 0) {
        const int g = c.group_size;
        if (g % 16 != 0 || d.channels % g != 0)
          return InvalidArgument(name + Str(": group_size=%lld must be a multiple of 16 dividing head_dim=%lld",
                                            g, d.channels));
      }
      if (NumGroups(c, d) > 1024) return InvalidArgument(name + ": more than 1024 groups per segment");
      return KernelStatus::Ok();
  }
  return InvalidArgument("unknown format");
}

KernelOr<PageGeometry> PageGeometry::Create(const LayoutShape& shape, const CodecFn& codec_of) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateShape(shape));
  PageGeometry g;
  g.shape_ = shape;
  const SegmentDims dims{shape.block_size, shape.head_dim};
  g.segments_.resize(static_cast<size_t>(shape.num_layers) * 2 * shape.num_kv_heads);
  uint64_t data = 0;
  uint64_t params = 0;
  for (int layer = 0; layer < shape.num_layers; ++layer)
    for (Operand op : {Operand::kKey, Operand::kValue})
      for (int head = 0; head < shape.num_kv_heads; ++head) {
        SegmentPlacement& p = g.segments_[SegmentIndex(shape, layer, op, head)];
        p.codec = codec_of(layer, op, head);
        KernelStatus st = ValidateCodec(p.codec, dims);
        if (!st.ok())
          return InvalidArgument(Str("layer %lld head %lld ", layer, head) + OperandName(op) + ": " + st.message());
        p.data_offset = data;
        p.data_bytes = SegmentDataBytes(p.codec.format, dims);
        p.param_offset = static_cast<uint32_t>(params);
        p.param_bytes = SegmentParamBytes(p.codec, dims);
        data = AlignUp(data + p.data_bytes);
        params = AlignUp(params + p.param_bytes);
      }
  if (params > UINT32_MAX) return InvalidArgument("parameter record too large");
  g.page_bytes_ = data;
  g.param_bytes_ = static_cast<uint32_t>(params);
  return g;
}

KernelOr<PageGeometry> PageGeometry::Uniform(const LayoutShape& shape, SegmentCodec key, SegmentCodec value) {
  return Create(shape, [&](int, Operand op, int) { return op == Operand::kKey ? key : value; });
}

std::string PageGeometry::DebugString() const {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%dL x %dH x %dD x %dT: page %llu B, params %u B", shape_.num_layers,
                shape_.num_kv_heads, shape_.head_dim, shape_.block_size,
                static_cast<unsigned long long>(page_bytes_), param_bytes_);
  return buf;
}

std::string KernelStatus::ToString() const {
  return ok() ? "OK" : "code " + std::to_string(static_cast<int>(code_)) + ": " + message_;
}

}  // namespace kvtier
