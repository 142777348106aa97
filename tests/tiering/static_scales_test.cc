// Static scales in the tiering layer: layout registration with a static-scale policy (offload geometry,
// include/exclude, unmatched patterns, wrong layouts refused), the host device's page-out/page-in with
// the layout's scale table (clip counting), and the calibrator.
#include "tiering/static_scales.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kernels/static_transcode.h"
#include "kernels/testing/kv_oracle.h"
#include "tiering/device_backend.h"
#include "tiering/layout.h"

namespace kvtier {
namespace {

constexpr LayoutShape kShape{4, 2, 64, 16};

std::vector<std::string> Names() {
  std::vector<std::string> n;
  for (int i = 0; i < kShape.num_layers; ++i) n.push_back("model.layers." + std::to_string(i) + ".self_attn");
  return n;
}

std::shared_ptr<const StaticScaleSet> Set(float scale = 0.02f) {
  auto s = std::make_shared<StaticScaleSet>();
  s->num_layers = kShape.num_layers;
  s->num_kv_heads = kShape.num_kv_heads;
  s->head_dim = kShape.head_dim;
  s->layer_names = Names();
  s->token_count = 64;
  s->scales.assign(static_cast<size_t>(kShape.num_layers) * 2 * kShape.num_kv_heads * kShape.head_dim, scale);
  s->id = StaticScaleSetId(*s);
  return s;
}

LayoutSpec Spec(std::optional<StaticScalesPolicy> st) {
  LayoutSpec spec;
  spec.shape = kShape;
  spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
  spec.policy_fingerprint = "fp16/int8";
  spec.layer_names = Names();
  spec.static_scales = std::move(st);
  return spec;
}

TEST(StaticScaleSetTest, ValidationNamesTheBadScale) {
  EXPECT_TRUE(ValidateStaticScaleSet(*Set()).ok());
  for (float bad : {0.0f, -0.5f, NAN, INFINITY}) {
    StaticScaleSet s = *Set();
    s.scales[s.Index(2, Operand::kValue, 1, 7)] = bad;
    const absl::Status st = ValidateStaticScaleSet(s);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("layer 2 V head 1 channel 7"), std::string::npos) << st;
  }
  StaticScaleSet s = *Set();
  s.scales.pop_back();
  EXPECT_FALSE(ValidateStaticScaleSet(s).ok());
  s = *Set();
  s.method = "percentile";
  EXPECT_FALSE(ValidateStaticScaleSet(s).ok());
  s = *Set();
  s.symmetric = false;
  EXPECT_FALSE(ValidateStaticScaleSet(s).ok());
  EXPECT_NE(StaticScaleSetId(*Set(0.02f)), StaticScaleSetId(*Set(0.03f)));
}

TEST(StaticScalesLayoutTest, IncludeExcludeShapeTheOffloadGeometryAndTheLayoutId) {
  LayoutRegistry reg;
  auto plain = reg.Register(Spec(std::nullopt));
  ASSERT_TRUE(plain.ok());
  StaticScalesPolicy p{Set(), Format::kInt8, {"model.layers.*"}, {"model.layers.0.self_attn", "nothing.*", "3"}};
  auto st = reg.Register(Spec(p));
  ASSERT_TRUE(st.ok()) << st.status();
  const Layout& l = **st;
  EXPECT_NE(l.id, (*plain)->id);
  ASSERT_NE(l.static_plan, nullptr);
  EXPECT_EQ(l.static_plan->static_layers, (std::vector<bool>{false, true, true, false}));
  EXPECT_EQ(l.static_plan->unmatched_patterns, (std::vector<std::string>{"exclude 'nothing.*'"}));
  EXPECT_EQ(l.offload.param_bytes(), 0u);
  EXPECT_TRUE(HasStaticSegments(l.offload));
  for (int layer = 0; layer < kShape.num_layers; ++layer) {
    const SegmentCodec c = l.offload.segment(layer, Operand::kValue, 1).codec;
    if (l.static_plan->static_layers[layer])
      EXPECT_EQ(c, (SegmentCodec{Format::kInt8, Grouping::kStaticChannel, 0}));
    else
      EXPECT_EQ(c, (SegmentCodec{Format::kFp16, Grouping::kNone, 0})) << "excluded layers stay unquantized";
  }
  // The same policy again: the same layout; another format or set: another layout.
  EXPECT_EQ(*reg.Register(Spec(p)), *st);
  StaticScalesPolicy fp8 = p;
  fp8.format = Format::kFp8E4m3;
  auto l8 = reg.Register(Spec(fp8));
  ASSERT_TRUE(l8.ok());
  EXPECT_NE((*l8)->id, l.id);
  EXPECT_FLOAT_EQ((*l8)->static_plan->table[PageGeometry::SegmentIndex(kShape, 1, Operand::kKey, 0) * kShape.head_dim],
                  0.02f * 127.0f / 448.0f);
  StaticScalesPolicy other = p;
  other.set = Set(0.05f);
  EXPECT_NE((*reg.Register(Spec(other)))->id, l.id);
}

TEST(StaticScalesLayoutTest, WrongLayoutsAndQuantizedResidentFormatsAreRefused) {
  LayoutRegistry reg;
  StaticScalesPolicy p{Set(), Format::kInt8, {"*"}, {}};
  LayoutSpec spec = Spec(p);
  spec.shape.num_kv_heads = 4;
  auto r = reg.Register(spec);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("calibrated for another layout"), std::string::npos) << r.status();
  spec = Spec(p);
  spec.layer_names[1] = "decoder.1";
  EXPECT_FALSE(reg.Register(spec).ok());
  spec = Spec(p);
  spec.policy = PrecisionPolicy::Uniform(Format::kFp8E4m3, Format::kInt8);
  r = reg.Register(spec);
  EXPECT_NE(r.status().message().find("unquantized"), std::string::npos) << r.status();
  p.format = Format::kInt4;
  EXPECT_FALSE(reg.Register(Spec(p)).ok());
  EXPECT_EQ(reg.size(), 0u);
}

TEST(StaticScalesLayoutTest, HostDevicePagesOutWithTheScaleTableAndCountsClips) {
  LayoutRegistry reg;
  // Scale 0.02: the oracle's outlier K channels (|x| up to ~24) clip, the rest (|x| <= ~3.03) does not.
  auto st = reg.Register(Spec(StaticScalesPolicy{Set(0.025f), Format::kInt8, {"*"}, {"0"}}));
  ASSERT_TRUE(st.ok());
  const Layout& l = **st;
  auto dev = MakeHostDeviceBackend(2);
  auto arena = dev->CreateArena(l, 8);
  ASSERT_TRUE(arena.ok());
  std::vector<std::vector<uint8_t>> pages(3, std::vector<uint8_t>(l.activation_geometry.page_bytes()));
  std::vector<const uint8_t*> src;
  for (int i = 0; i < 3; ++i) {
    testing::FillActivationPage(l.activation_geometry, Format::kFp16, 77 + i, pages[i].data());
    src.push_back(pages[i].data());
  }
  const std::vector<int32_t> slots{5, 1, 3};
  ASSERT_TRUE(dev->WriteActivations(l, **arena, slots, src).ok());
  std::vector<std::vector<uint8_t>> records(3, std::vector<uint8_t>(l.offload_record_bytes()));
  std::vector<uint8_t*> recs;
  for (auto& r : records) recs.push_back(r.data());
  ASSERT_TRUE(dev->PageOut(l, l.offload, **arena, slots, recs).ok());
  // The same bytes and clip count as the kernels' reference with the plan's table.
  uint64_t want_clips = 0;
  for (int i = 0; i < 3; ++i) {
    std::vector<uint8_t> want(l.offload.page_bytes());
    ASSERT_TRUE(TranscodePageStaticRef(l.resident, {pages[i].data(), nullptr}, l.offload, {want.data(), nullptr},
                                       l.static_plan->table, &want_clips)
                    .ok());
    EXPECT_EQ(0, std::memcmp(want.data(), records[i].data(), want.size())) << "page " << i;
  }
  EXPECT_GT(want_clips, 0u);
  EXPECT_EQ(l.static_plan->clipped.load(), want_clips);
  // Page-in to other slots and read back: layer 0 exact, the others within s/2 unless clipped.
  const std::vector<int32_t> back{0, 2, 4};
  std::vector<const uint8_t*> crecs(recs.begin(), recs.end());
  ASSERT_TRUE(dev->PageIn(l, l.offload, **arena, back, crecs).ok());
  std::vector<std::vector<uint8_t>> out(3, std::vector<uint8_t>(l.activation_geometry.page_bytes()));
  std::vector<uint8_t*> dst;
  for (auto& o : out) dst.push_back(o.data());
  ASSERT_TRUE(dev->ReadActivations(l, **arena, back, dst).ok());
  const PageGeometry& g = l.activation_geometry;
  for (int i = 0; i < 3; ++i)
    for (int s = 0; s < g.num_segments(); ++s) {
      const bool is_static = s >= PageGeometry::SegmentIndex(kShape, 1, Operand::kKey, 0);
      const float sc = l.static_plan->table[static_cast<size_t>(s) * kShape.head_dim];
      for (int v = 0; v < kShape.block_size * kShape.head_dim; ++v) {
        uint16_t a, b;
        std::memcpy(&a, pages[i].data() + g.segment(s).data_offset + 2 * v, 2);
        std::memcpy(&b, out[i].data() + g.segment(s).data_offset + 2 * v, 2);
        const float x = HalfToFloat(a), y = HalfToFloat(b);
        if (!is_static) {
          ASSERT_EQ(a, b);
        } else if (std::fabs(x) <= 127 * sc) {
          ASSERT_LE(std::fabs(x - y), sc / 2 + std::fabs(y) / 2048 + 1e-6f);
        } else {
          ASSERT_NEAR(std::fabs(y), 127 * sc, 127 * sc / 1024);
        }
      }
    }
}

TEST(CalibratorTest, CollectsOnlyWhileOnAndOnlyTheTargetLayout) {
  const PageGeometry act = *PageGeometry::Uniform(kShape, DefaultCodec(Format::kFp16, Operand::kKey),
                                                  DefaultCodec(Format::kFp16, Operand::kValue));
  std::vector<uint8_t> page(act.page_bytes());
  testing::FillActivationPage(act, Format::kFp16, 5, page.data());
  const std::vector<const uint8_t*> pages{page.data()};
  Calibrator c;
  c.Observe(1, act, pages);  // off: ignored
  EXPECT_FALSE(c.Snapshot(0).ok());
  c.Start(7);
  EXPECT_TRUE(c.active());
  c.Observe(1, act, pages);  // another layout
  c.Observe(7, act, pages);
  c.Observe(7, act, pages);
  EXPECT_TRUE(c.Stop());
  EXPECT_FALSE(c.Stop());
  c.Observe(7, act, pages);  // stopped
  auto snap = c.Snapshot(0);
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->first, 7u);
  EXPECT_EQ(snap->second.tokens(), 2u * kShape.block_size);
  EXPECT_EQ(c.Snapshot(1).status().code(), absl::StatusCode::kNotFound);
  c.Start(0);  // every layout; restarting clears
  c.Observe(1, act, pages);
  c.Observe(2, act, pages);
  EXPECT_EQ(c.Snapshot(0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.Snapshot(2)->second.tokens(), 1u * kShape.block_size);
  EXPECT_EQ(c.Layouts().size(), 2u);
}

}  // namespace
}  // namespace kvtier
