#include "kernels/precision_policy.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kvtier {
namespace {

constexpr LayoutShape kLlama3_8B{32, 8, 128, 16};
const SegmentCodec kFp16K = DefaultCodec(Format::kFp16, Operand::kKey);
const SegmentCodec kInt8K{Format::kInt8, Grouping::kPerChannel, 0};
const SegmentCodec kInt4V{Format::kInt4, Grouping::kPerToken, 32};

std::vector<std::string> LlamaNames(int n) {
  std::vector<std::string> v;
  for (int i = 0; i < n; ++i) v.push_back("model.layers." + std::to_string(i) + ".self_attn");
  return v;
}

SegmentCodec Offload(const ResolvedPolicy& r, int layer, Operand op, int head, bool first = false) {
  return r.geometry(PolicyTier::kOffload, first).segment(layer, op, head).codec;
}

TEST(PrecisionPolicy, OneFormatEverywhere) {
  auto r = Resolve(PrecisionPolicy::Uniform(Format::kFp16, Format::kFp8E4m3), kLlama3_8B);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (const auto& s : r->offload.segments()) EXPECT_EQ(s.codec.format, Format::kFp8E4m3);
  for (const auto& s : r->resident.segments()) EXPECT_EQ(s.codec.format, Format::kFp16);
  EXPECT_FALSE(r->first_block_differs);
  EXPECT_EQ(r->offload.page_bytes(), 1u << 20);
}

TEST(PrecisionPolicy, K8V4KeepsFirstAndLastLayerFp16) {
  PrecisionPolicy p = PrecisionPolicy::K8V4();
  p.rules.push_back({.name = "keep ends",
                     .tiers = RuleTiers::kOffload,
                     .layers = {"0", "-1"},
                     .key = kFp16K,
                     .value = DefaultCodec(Format::kFp16, Operand::kValue)});
  auto r = Resolve(p, kLlama3_8B);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Offload(*r, 0, Operand::kKey, 0), kFp16K);
  EXPECT_EQ(Offload(*r, 31, Operand::kValue, 7).format, Format::kFp16);
  EXPECT_EQ(Offload(*r, 1, Operand::kKey, 0), kInt8K);
  EXPECT_EQ(Offload(*r, 30, Operand::kValue, 3), kInt4V);
  EXPECT_EQ(r->resident.segment(1, Operand::kKey, 0).codec.format, Format::kFp16);
}

TEST(PrecisionPolicy, ExcludeWinsOverInclude) {
  PrecisionPolicy p;  // fp16 everywhere by default
  p.rules.push_back({.layers = {"*"},
                     .exclude_layers = {"0", "-2--1"},
                     .key = kInt8K,
                     .value = DefaultCodec(Format::kInt8, Operand::kValue)});
  auto r = Resolve(p, kLlama3_8B);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Offload(*r, 0, Operand::kKey, 0).format, Format::kFp16);
  EXPECT_EQ(Offload(*r, 1, Operand::kKey, 0).format, Format::kInt8);
  EXPECT_EQ(Offload(*r, 29, Operand::kKey, 0).format, Format::kInt8);
  EXPECT_EQ(Offload(*r, 30, Operand::kKey, 0).format, Format::kFp16);
  EXPECT_EQ(Offload(*r, 31, Operand::kKey, 0).format, Format::kFp16);
}

TEST(PrecisionPolicy, RangesAndLastRuleWins) {
  PrecisionPolicy p = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
  p.rules.push_back({.layers = {"0-3"}, .key = DefaultCodec(Format::kFp8E4m3, Operand::kKey)});
  p.rules.push_back({.layers = {"2"}, .key = kFp16K});
  auto r = Resolve(p, kLlama3_8B);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Offload(*r, 0, Operand::kKey, 0).format, Format::kFp8E4m3);
  EXPECT_EQ(Offload(*r, 2, Operand::kKey, 0).format, Format::kFp16);
  EXPECT_EQ(Offload(*r, 3, Operand::kKey, 0).format, Format::kFp8E4m3);
  EXPECT_EQ(Offload(*r, 3, Operand::kValue, 0).format, Format::kInt8);  // rule set no value codec
  EXPECT_EQ(Offload(*r, 4, Operand::kKey, 0).format, Format::kInt8);
  // Resident tier untouched? No: tiers default to kBoth, so the resident copy follows the rules too.
  EXPECT_EQ(r->resident.segment(0, Operand::kKey, 0).codec.format, Format::kFp8E4m3);
}

TEST(PrecisionPolicy, EmptyLayerListSelectsEveryLayer) {
  PrecisionPolicy p;
  p.rules.push_back({.tiers = RuleTiers::kOffload, .exclude_layers = {"0"}, .key = kInt8K});
  auto r = Resolve(p, kLlama3_8B);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Offload(*r, 0, Operand::kKey, 0).format, Format::kFp16);
  for (int l = 1; l < 32; ++l) EXPECT_EQ(Offload(*r, l, Operand::kKey, 0), kInt8K);
}

TEST(PrecisionPolicy, PerHeadOverride) {
  PrecisionPolicy p = PrecisionPolicy::K8V4();
  p.rules.push_back(
      {.tiers = RuleTiers::kOffload, .heads = {3, 5}, .value = DefaultCodec(Format::kInt8, Operand::kValue)});
  auto r = Resolve(p, kLlama3_8B);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Offload(*r, 7, Operand::kValue, 3).format, Format::kInt8);
  EXPECT_EQ(Offload(*r, 7, Operand::kValue, 5).format, Format::kInt8);
  EXPECT_EQ(Offload(*r, 7, Operand::kValue, 4), kInt4V);
  EXPECT_EQ(Offload(*r, 7, Operand::kKey, 3), kInt8K);
}

TEST(PrecisionPolicy, FirstBlockOfSequenceKeepsHigherPrecision) {
  PrecisionPolicy p = PrecisionPolicy::K8V4();
  p.rules.push_back({.name = "sinks",
                     .first_block_only = true,
                     .key = kFp16K,
                     .value = DefaultCodec(Format::kFp16, Operand::kValue)});
  auto r = Resolve(p, kLlama3_8B);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->first_block_differs);
  EXPECT_EQ(Offload(*r, 5, Operand::kKey, 0, /*first=*/false), kInt8K);
  EXPECT_EQ(Offload(*r, 5, Operand::kKey, 0, /*first=*/true), kFp16K);
  EXPECT_EQ(r->offload_first_block.page_bytes(), 2u << 20);
  EXPECT_LT(r->offload.page_bytes(), r->offload_first_block.page_bytes());
}

TEST(PrecisionPolicy, LayerNameGlobs) {
  const auto names = LlamaNames(32);
  PrecisionPolicy p = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
  p.rules.push_back({.layers = {"model.layers.1?.self_attn"}, .key = kFp16K});
  auto r = Resolve(p, kLlama3_8B, names);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Offload(*r, 1, Operand::kKey, 0).format, Format::kInt8);
  EXPECT_EQ(Offload(*r, 10, Operand::kKey, 0).format, Format::kFp16);
  EXPECT_EQ(Offload(*r, 19, Operand::kKey, 0).format, Format::kFp16);
  EXPECT_EQ(Offload(*r, 20, Operand::kKey, 0).format, Format::kInt8);
  EXPECT_TRUE(LayerPatternMatches("model.*.self_attn", 3, 32, names[3]));
  EXPECT_FALSE(LayerPatternMatches("model.*.mlp", 3, 32, names[3]));
  EXPECT_TRUE(LayerPatternMatches("-1", 31, 32, ""));
  EXPECT_FALSE(LayerPatternMatches("-1", 30, 32, ""));
}

void ExpectError(const KernelStatus& st, const std::string& needle) {
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find(needle), std::string::npos) << "message: " << st.message();
}

TEST(PrecisionPolicy, RejectsBadInputWithClearMessages) {
  auto with_rule = [](PrecisionRule r) {
    PrecisionPolicy p;
    p.rules.push_back(std::move(r));
    return p;
  };
  ExpectError(with_rule({.name = "empty"}).Validate(), "rule 0 'empty': sets neither");
  EXPECT_TRUE(with_rule({.layers = {}, .key = kInt8K}).Validate().ok());  // empty layer list: every layer
  ExpectError(with_rule({.layers = {"1-2-3"}, .key = kInt8K}).Validate(), "'1-2-3' is not N, -N or A-B");
  ExpectError(with_rule({.layers = {""}, .key = kInt8K}).Validate(), "empty layer pattern");
  ExpectError(with_rule({.heads = {-1}, .key = kInt8K}).Validate(), "negative head");
  ExpectError(with_rule({.key = SegmentCodec{Format::kInt8, Grouping::kNone, 0}}).Validate(),
              "per_channel or per_token");
  ExpectError(with_rule({.value = SegmentCodec{Format::kInt4, Grouping::kPerToken, 24}}).Validate(), "multiple of 16");
  ExpectError(with_rule({.key = SegmentCodec{Format::kFp16, Grouping::kPerChannel, 0}}).Validate(),
              "takes no grouping");
  PrecisionPolicy bad_default;
  bad_default.offload_value = {Format::kFp8E4m3, Grouping::kPerToken, 0};
  ExpectError(bad_default.Validate(), "offload_value");

  ExpectError(ValidateFor(with_rule({.layers = {"32"}, .key = kInt8K}), kLlama3_8B), "outside the layout's 32 layers");
  ExpectError(ValidateFor(with_rule({.layers = {"-33"}, .key = kInt8K}), kLlama3_8B), "outside");
  ExpectError(ValidateFor(with_rule({.layers = {"5-2"}, .key = kInt8K}), kLlama3_8B), "empty (first > last)");
  ExpectError(ValidateFor(with_rule({.heads = {8}, .key = kInt8K}), kLlama3_8B), "head 8 >= num_kv_heads 8");
  ExpectError(ValidateFor(with_rule({.layers = {"model.layers.*"}, .key = kInt8K}), kLlama3_8B), "needs layer names");
  const auto names = LlamaNames(32);
  ExpectError(ValidateFor(with_rule({.layers = {"decoder.*"}, .key = kInt8K}), kLlama3_8B, names), "matches no layer");
  ExpectError(ValidateFor(with_rule({.layers = {"0-1"}, .exclude_layers = {"*"}, .key = kInt8K}), kLlama3_8B),
              "leave no layer");
  ExpectError(ValidateFor(PrecisionPolicy{}, kLlama3_8B, LlamaNames(3)), "3 layer names for 32 layers");
  ExpectError(ValidateFor(with_rule({.value = SegmentCodec{Format::kInt4, Grouping::kPerToken, 48}}), kLlama3_8B),
              "group_size=48");
  EXPECT_FALSE(Resolve(PrecisionPolicy{}, {32, 8, 100, 16}).ok());
}

TEST(CodecSpec, ParsesConfigStrings) {
  auto k = ParseCodecSpec("int8", Operand::kKey);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(*k, kInt8K);
  auto v = ParseCodecSpec("int4:per_token:64", Operand::kValue);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(*v, (SegmentCodec{Format::kInt4, Grouping::kPerToken, 64}));
  EXPECT_EQ(CodecSpecString(*v), "int4:per_token:64");
  auto pt = ParseCodecSpec("int8:per_token", Operand::kKey);
  ASSERT_TRUE(pt.ok());
  EXPECT_EQ(*pt, (SegmentCodec{Format::kInt8, Grouping::kPerToken, 0}));
  EXPECT_EQ(CodecSpecString(DefaultCodec(Format::kFp8E5m2, Operand::kKey)), "fp8_e5m2:per_segment");
  auto i4 = ParseCodecSpec("int4:per_token", Operand::kKey);  // per-token int4 defaults to groups of 32
  ASSERT_TRUE(i4.ok());
  EXPECT_EQ(*i4, kInt4V);
  auto fields = MakeCodec("int4", "", 0, Operand::kValue);  // empty grouping: the operand's default
  ASSERT_TRUE(fields.ok());
  EXPECT_EQ(*fields, kInt4V);
  ExpectError(MakeCodec("int8", "per_channel", 16, Operand::kKey).status(), "needs per_token");
  ExpectError(ParseCodecSpec("int3", Operand::kKey).status(), "unknown format 'int3'");
  ExpectError(ParseCodecSpec("int8:diagonal", Operand::kKey).status(), "unknown grouping");
  ExpectError(ParseCodecSpec("int8:per_channel:32", Operand::kKey).status(), "needs per_token");
  ExpectError(ParseCodecSpec("int4:per_token:x", Operand::kKey).status(), "bad group size");
  ExpectError(ParseCodecSpec("fp8_e4m3:per_channel", Operand::kKey).status(), "per_segment");
  ExpectError(ParseCodecSpec("int4:per_token:32:1", Operand::kKey).status(), "more than 3");
}

}  // namespace
}  // namespace kvtier
