#include "kernels/page_geometry.h"

#include <gtest/gtest.h>

namespace kvtier {
namespace {

constexpr LayoutShape kLlama3_8B{32, 8, 128, 16};

TEST(PageGeometry, Llama3PageInFp16IsTwoMiB) {
  auto g = PageGeometry::Uniform(kLlama3_8B, DefaultCodec(Format::kFp16, Operand::kKey),
                                 DefaultCodec(Format::kFp16, Operand::kValue));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->page_bytes(), 2u << 20);
  EXPECT_EQ(g->param_bytes(), 0u);
  // One layer's K and V are contiguous: layer 1 K head 0 follows layer 0 V head 7.
  EXPECT_EQ(g->segment(1, Operand::kKey, 0).data_offset,
            g->segment(0, Operand::kValue, 7).data_offset + g->segment(0, Operand::kValue, 7).data_bytes);
}

TEST(PageGeometry, Int8PageCarriesScalesSeparately) {
  auto g = PageGeometry::Uniform(kLlama3_8B, DefaultCodec(Format::kInt8, Operand::kKey),
                                 DefaultCodec(Format::kInt8, Operand::kValue));
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->page_bytes(), 1u << 20);
  // K: 128 fp16 scales per segment; V: 16 fp16 scales per segment.
  EXPECT_EQ(g->param_bytes(), 32u * 8 * (128 * 2 + 16 * 2));
}

TEST(PageGeometry, MixedPolicyPerLayerAndHead) {
  auto g = PageGeometry::Create(kLlama3_8B, [](int layer, Operand op, int head) {
    if (layer == 0) return DefaultCodec(Format::kFp16, op);
    return DefaultCodec(head < 4 ? Format::kFp8E4m3 : Format::kInt4, op);
  });
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->segment(0, Operand::kKey, 3).codec.format, Format::kFp16);
  EXPECT_EQ(g->segment(5, Operand::kValue, 3).codec.format, Format::kFp8E4m3);
  EXPECT_EQ(g->segment(5, Operand::kValue, 4).codec.format, Format::kInt4);
  for (const auto& s : g->segments()) {
    EXPECT_EQ(s.data_offset % 16, 0u);
    EXPECT_EQ(s.param_offset % 16, 0u);
  }
}

TEST(PageGeometry, RejectsBadShapesAndCodecs) {
  EXPECT_FALSE(PageGeometry::Uniform({0, 8, 128, 16}, {}, {}).ok());
  EXPECT_FALSE(PageGeometry::Uniform({32, 0, 128, 16}, {}, {}).ok());
  EXPECT_FALSE(PageGeometry::Uniform({32, 8, 100000, 16}, {}, {}).ok());
  EXPECT_FALSE(PageGeometry::Uniform({32, 8, 128, 15}, {}, {}).ok());
  const SegmentCodec bad_group{Format::kInt4, Grouping::kPerToken, 48};
  auto g = PageGeometry::Uniform(kLlama3_8B, bad_group, bad_group);
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.status().message().find("group_size"), std::string::npos);
  EXPECT_FALSE(PageGeometry::Uniform(kLlama3_8B, {Format::kFp16, Grouping::kPerToken, 0}, {}).ok());
}

}  // namespace
}  // namespace kvtier
