#include "kernels/format.h"

#include <array>

namespace kvtier {

std::optional<Format> ParseFormat(std::string_view name) {
  for (int i = 0; i < kNumFormats; ++i) {
    const auto f = static_cast<Format>(i);
    if (GetFormatInfo(f).name == name) return f;
  }
  return std::nullopt;
}

namespace {
constexpr std::array<std::string_view, 5> kGroupingNames = {"none", "per_segment", "per_channel", "per_token",
                                                            "static_channel"};
}  // namespace

std::optional<Grouping> ParseGrouping(std::string_view name) {
  for (size_t i = 0; i < kGroupingNames.size(); ++i)
    if (kGroupingNames[i] == name) return static_cast<Grouping>(i);
  return std::nullopt;
}

std::string_view GroupingName(Grouping g) { return kGroupingNames[static_cast<size_t>(g)]; }

SegmentCodec DefaultCodec(Format f, Operand op) {
  switch (f) {
    case Format::kFp16:
    case Format::kBf16: return {f, Grouping::kNone, 0};
    case Format::kFp8E4m3:
    case Format::kFp8E5m2: return {f, Grouping::kPerSegment, 0};
    case Format::kInt8:
      return op == Operand::kKey ? SegmentCodec{f, Grouping::kPerChannel, 0} : SegmentCodec{f, Grouping::kPerToken, 0};
    case Format::kInt4:
      return op == Operand::kKey ? SegmentCodec{f, Grouping::kPerChannel, 0}
                                 : SegmentCodec{f, Grouping::kPerToken, 32};
    case Format::kFp4E2m1:
      return {f, op == Operand::kKey ? Grouping::kPerChannel : Grouping::kPerToken, 16};
  }
  return {};
}

}  // namespace kvtier
