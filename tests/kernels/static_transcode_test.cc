// Static (calibrated) scales: reference vs fast path (bit-exact, equal clip counts), error bound and
// clipping, bad scale tables, calibration statistics.
#include "kernels/static_transcode.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/calibration.h"
#include "kernels/precision_policy.h"
#include "kernels/static_codec.h"

namespace kvtier {
namespace {

constexpr LayoutShape kShape{3, 2, 64, 16};

struct Page {
  std::vector<uint8_t> data, params;
  explicit Page(const PageGeometry& g) : data(g.page_bytes(), 0xcd), params(g.param_bytes() + 16, 0xcd) {}
  PageView view() const { return {data.data(), params.data()}; }
  MutablePageView mut() { return {data.data(), params.data()}; }
};

PageGeometry Fp16() {
  return *PageGeometry::Uniform(kShape, DefaultCodec(Format::kFp16, Operand::kKey),
                                DefaultCodec(Format::kFp16, Operand::kValue));
}

// Layer 1 stays fp16 (excluded), the other layers use `f` with static scales.
PageGeometry StaticGeometry(Format f) {
  return *PageGeometry::Create(kShape, [&](int layer, Operand, int) {
    return layer == 1 ? SegmentCodec{Format::kFp16, Grouping::kNone, 0} : SegmentCodec{f, Grouping::kStaticChannel, 0};
  });
}

// Scales for |x| up to about `absmax` per channel (so the generator's tails clip), for `f`'s code range.
std::vector<float> Scales(const PageGeometry& g, float absmax, Format f = Format::kInt8) {
  std::vector<float> s(static_cast<size_t>(g.num_segments()) * kShape.head_dim);
  const float limit = StaticCodeLimit(f);
  for (size_t i = 0; i < s.size(); ++i) s[i] = HalfToFloat(FloatToHalfRoundUp(absmax * (1.0f + (i % 7) * 0.1f) / limit));
  return s;
}

Page RandomFp16(const PageGeometry& g, uint32_t seed, bool specials) {
  Page p(g);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (size_t i = 0; i < p.data.size() / 2; ++i) {
    float v = n(rng);
    if (specials && i % 211 == 3) v = NAN;
    if (specials && i % 307 == 5) v = (i & 1) ? INFINITY : -INFINITY;
    if (specials && i % 101 == 7) v = 60000.0f;
    const uint16_t h = FloatToHalf(v);
    std::memcpy(&p.data[2 * i], &h, 2);
  }
  return p;
}

float HalfAt(const Page& p, size_t offset, size_t i) {
  uint16_t h;
  std::memcpy(&h, &p.data[offset + 2 * i], 2);
  return HalfToFloat(h);
}

class StaticTranscode : public ::testing::TestWithParam<Format> {};

TEST_P(StaticTranscode, FastPathMatchesReferenceBytesAndClipCounts) {
  const PageGeometry fp16 = Fp16(), st = StaticGeometry(GetParam());
  ASSERT_EQ(st.param_bytes(), 0u);  // nothing per block
  const std::vector<float> scales = Scales(st, 2.5f, GetParam());
  std::vector<Page> src, ref, fast_best, fast_portable;
  std::vector<PageView> in;
  std::vector<MutablePageView> out_best, out_portable;
  uint64_t ref_clips = 0;
  for (uint32_t i = 0; i < 5; ++i) src.push_back(RandomFp16(fp16, 100 + i, /*specials=*/i % 2 == 1));
  for (uint32_t i = 0; i < 5; ++i) {
    ref.emplace_back(st);
    fast_best.emplace_back(st);
    fast_portable.emplace_back(st);
  }
  for (uint32_t i = 0; i < 5; ++i) {
    ASSERT_TRUE(TranscodePageStaticRef(fp16, src[i].view(), st, ref[i].mut(), scales, &ref_clips).ok());
    in.push_back(src[i].view());
    out_best.push_back(fast_best[i].mut());
    out_portable.push_back(fast_portable[i].mut());
  }
  uint64_t best_clips = 0, portable_clips = 0;
  ASSERT_TRUE(TranscodePagesStaticCpu(fp16, in, st, out_best, scales, &best_clips, 3, CpuPath::kBest).ok());
  ASSERT_TRUE(TranscodePagesStaticCpu(fp16, in, st, out_portable, scales, &portable_clips, 1, CpuPath::kPortable).ok());
  EXPECT_GT(ref_clips, 0u);
  EXPECT_EQ(best_clips, ref_clips);
  EXPECT_EQ(portable_clips, ref_clips);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(fast_best[i].data, ref[i].data) << "page " << i;
    EXPECT_EQ(fast_portable[i].data, ref[i].data) << "page " << i;
  }
  // And back: static -> fp16, reference vs fast.
  std::vector<Page> back_ref, back_fast;
  std::vector<PageView> sin;
  std::vector<MutablePageView> bout;
  for (int i = 0; i < 5; ++i) {
    back_ref.emplace_back(fp16);
    back_fast.emplace_back(fp16);
  }
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(TranscodePageStaticRef(st, ref[i].view(), fp16, back_ref[i].mut(), scales).ok());
    sin.push_back(ref[i].view());
    bout.push_back(back_fast[i].mut());
  }
  uint64_t decode_clips = 0;
  ASSERT_TRUE(TranscodePagesStaticCpu(st, sin, fp16, bout, scales, &decode_clips, 2).ok());
  EXPECT_EQ(decode_clips, 0u);  // decoding clips nothing
  for (int i = 0; i < 5; ++i) EXPECT_EQ(back_fast[i].data, back_ref[i].data) << "page " << i;
}

TEST_P(StaticTranscode, RoundTripWithinBoundAndClipsCountedExactly) {
  const Format f = GetParam();
  const PageGeometry fp16 = Fp16(), st = StaticGeometry(f);
  const std::vector<float> scales = Scales(st, 2.5f, f);
  const Page src = RandomFp16(fp16, 7, /*specials=*/false);
  Page mid(st), back(fp16);
  uint64_t clips = 0;
  ASSERT_TRUE(TranscodePageStaticRef(fp16, src.view(), st, mid.mut(), scales, &clips).ok());
  ASSERT_TRUE(TranscodePageStaticRef(st, mid.view(), fp16, back.mut(), scales).ok());
  const float limit = StaticCodeLimit(f);
  uint64_t expect_clips = 0;
  const int n = kShape.block_size * kShape.head_dim;
  for (int s = 0; s < st.num_segments(); ++s) {
    const bool is_static = st.segment(s).codec.grouping == Grouping::kStaticChannel;
    for (int i = 0; i < n; ++i) {
      const float x = HalfAt(src, fp16.segment(s).data_offset, i);
      const float y = HalfAt(back, fp16.segment(s).data_offset, i);
      if (!is_static) {
        ASSERT_EQ(x, y) << "excluded layers are copied exactly";
        continue;
      }
      const float sc = scales[static_cast<size_t>(s) * kShape.head_dim + i % kShape.head_dim];
      const float range = limit * sc;
      if (std::fabs(x * (1.0f / sc)) > limit) {
        ++expect_clips;
        ASSERT_NEAR(std::fabs(y), range, range * 1e-3f) << "clipped to the largest code";
        ASSERT_EQ(std::signbit(x), std::signbit(y));
        continue;
      }
      // int8: half a step; fp8: the format's relative bound (docs/formats.md); plus the fp16 output rounding.
      const float bound = f == Format::kInt8 ? sc / 2
                          : f == Format::kFp8E4m3 ? std::fmax(std::fabs(x) / 16, sc / 1024)
                                                  : std::fmax(std::fabs(x) / 8, sc / 131072);
      ASSERT_LE(std::fabs(x - y), bound + std::fabs(y) / 2048 + 1e-7f) << "segment " << s << " value " << i;
    }
  }
  EXPECT_EQ(clips, expect_clips);
  EXPECT_GT(clips, 0u);
}

INSTANTIATE_TEST_SUITE_P(Formats, StaticTranscode,
                         ::testing::Values(Format::kInt8, Format::kFp8E4m3, Format::kFp8E5m2),
                         [](const auto& info) { return std::string(GetFormatInfo(info.param).name); });

TEST(StaticTranscodeChecks, BadScaleTablesAreRejectedAndNothingIsWritten) {
  const PageGeometry fp16 = Fp16(), st = StaticGeometry(Format::kInt8);
  const Page src = RandomFp16(fp16, 1, false);
  std::vector<float> good = Scales(st, 2.0f);
  for (float bad : {0.0f, -1.0f, NAN, INFINITY}) {
    std::vector<float> s = good;
    s[5] = bad;
    Page out(st);
    const std::vector<uint8_t> before = out.data;
    uint64_t clips = 0;
    const KernelStatus r = TranscodePageStaticRef(fp16, src.view(), st, out.mut(), s, &clips);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.message().find("positive finite"), std::string::npos) << r.message();
    const std::vector<PageView> in{src.view()};
    const std::vector<MutablePageView> o{out.mut()};
    EXPECT_FALSE(TranscodePagesStaticCpu(fp16, in, st, o, s, &clips).ok());
    EXPECT_EQ(out.data, before);
    EXPECT_EQ(clips, 0u);
  }
  // A bad scale of an excluded (fp16) segment is ignored: its entries are unused.
  std::vector<float> s = good;
  s[static_cast<size_t>(PageGeometry::SegmentIndex(kShape, 1, Operand::kKey, 0)) * kShape.head_dim] = 0.0f;
  Page out(st);
  EXPECT_TRUE(TranscodePageStaticRef(fp16, src.view(), st, out.mut(), s).ok());
  // Wrong table size.
  good.pop_back();
  EXPECT_FALSE(TranscodePageStaticRef(fp16, src.view(), st, out.mut(), good).ok());
}

TEST(StaticTranscodeChecks, OrdinaryTranscodesRefuseStaticSegments) {
  const PageGeometry fp16 = Fp16(), st = StaticGeometry(Format::kInt8);
  const Page src = RandomFp16(fp16, 1, false);
  Page out(st);
  const KernelStatus r = TranscodePageRef(fp16, src.view(), st, out.mut());
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.message().find("static"), std::string::npos);
  const std::vector<PageView> in{src.view()};
  const std::vector<MutablePageView> o{out.mut()};
  EXPECT_FALSE(TranscodePagesCpu(fp16, in, st, o).ok());
  EXPECT_TRUE(HasStaticSegments(st));
  EXPECT_FALSE(HasStaticSegments(fp16));
}

TEST(StaticTranscodeChecks, StaticGroupingIsNotAPolicyCodecAndOnlyForInt8AndFp8) {
  EXPECT_FALSE(ParseCodecSpec("int8:static_channel", Operand::kKey).ok());
  EXPECT_EQ(ParseGrouping("static_channel"), Grouping::kStaticChannel);
  const SegmentDims d{16, 128};
  EXPECT_TRUE(ValidateCodec({Format::kInt8, Grouping::kStaticChannel, 0}, d).ok());
  EXPECT_TRUE(ValidateCodec({Format::kFp8E4m3, Grouping::kStaticChannel, 0}, d).ok());
  EXPECT_FALSE(ValidateCodec({Format::kInt4, Grouping::kStaticChannel, 0}, d).ok());
  EXPECT_FALSE(ValidateCodec({Format::kFp16, Grouping::kStaticChannel, 0}, d).ok());
  EXPECT_EQ(SegmentParamBytes({Format::kInt8, Grouping::kStaticChannel, 0}, d), 0u);
}

TEST(Calibration, CollectsPerChannelMinMaxAndSymmetricScales) {
  const PageGeometry fp16 = Fp16();
  CalibrationStats stats(kShape);
  Page a = RandomFp16(fp16, 11, false), b = RandomFp16(fp16, 12, true);
  // Channel 3 of layer 2 V head 1 is always zero: its scale is the floor.
  const size_t zero_seg = static_cast<size_t>(PageGeometry::SegmentIndex(kShape, 2, Operand::kValue, 1));
  for (Page* p : {&a, &b})
    for (int t = 0; t < kShape.block_size; ++t) {
      const uint16_t z = 0;
      std::memcpy(&p->data[fp16.segment(static_cast<int>(zero_seg)).data_offset + 2 * (t * kShape.head_dim + 3)], &z, 2);
    }
  const std::vector<const uint8_t*> pages{a.data.data(), b.data.data()};
  ASSERT_TRUE(stats.AddPages(fp16, pages).ok());
  EXPECT_EQ(stats.tokens(), 2u * kShape.block_size);
  const std::vector<float> scales = stats.SymmetricInt8Scales();
  for (int s = 0; s < fp16.num_segments(); ++s)
    for (int ch = 0; ch < kShape.head_dim; ++ch) {
      float lo = INFINITY, hi = -INFINITY;
      for (const Page* p : {&a, &b})
        for (int t = 0; t < kShape.block_size; ++t) {
          const float x = HalfAt(*p, fp16.segment(s).data_offset, t * kShape.head_dim + ch);
          if (!std::isfinite(x)) continue;
          lo = std::fmin(lo, x);
          hi = std::fmax(hi, x);
        }
      const size_t i = static_cast<size_t>(s) * kShape.head_dim + ch;
      ASSERT_EQ(stats.lo()[i], lo);
      ASSERT_EQ(stats.hi()[i], hi);
      ASSERT_EQ(scales[i], std::fmax(std::fmax(std::fabs(lo), std::fabs(hi)) / 127.0f, kMinStaticScale));
    }
  EXPECT_EQ(scales[zero_seg * kShape.head_dim + 3], kMinStaticScale);
  // Merging doubles the token count and keeps the extremes.
  CalibrationStats other(kShape);
  ASSERT_TRUE(other.AddPages(fp16, std::vector<const uint8_t*>{a.data.data()}).ok());
  other.Merge(stats);
  EXPECT_EQ(other.tokens(), 3u * kShape.block_size);
  EXPECT_EQ(other.lo(), stats.lo());
  // Wrong shape is refused.
  CalibrationStats wrong(LayoutShape{2, 2, 64, 16});
  EXPECT_FALSE(wrong.AddPages(fp16, pages).ok());
}

}  // namespace
}  // namespace kvtier
