#include "kernels/transcode.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

namespace kvtier {
namespace {

constexpr LayoutShape kShape{4, 2, 64, 16};

struct Page {
  std::vector<uint8_t> data, params;
  Page(const PageGeometry& g) : data(g.page_bytes()), params(g.param_bytes()) {}
  PageView view() const { return {data.data(), params.data()}; }
  MutablePageView mut() { return {data.data(), params.data()}; }
};

Page RandomFp16Page(const PageGeometry& g, uint32_t seed) {
  Page p(g);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (size_t i = 0; i < p.data.size() / 2; ++i) {
    const uint16_t h = FloatToHalf(n(rng));
    std::memcpy(&p.data[2 * i], &h, 2);
  }
  return p;
}

TEST(Transcode, Fp16ToInt8AndBackStaysWithinTheInt8Bound) {
  auto fp16 = PageGeometry::Uniform(kShape, DefaultCodec(Format::kFp16, Operand::kKey),
                                    DefaultCodec(Format::kFp16, Operand::kValue));
  auto int8 = PageGeometry::Uniform(kShape, DefaultCodec(Format::kInt8, Operand::kKey),
                                    DefaultCodec(Format::kInt8, Operand::kValue));
  ASSERT_TRUE(fp16.ok() && int8.ok());
  Page src = RandomFp16Page(*fp16, 3), mid(*int8), back(*fp16);
  ASSERT_TRUE(TranscodePageRef(*fp16, src.view(), *int8, mid.mut()).ok());
  ASSERT_TRUE(TranscodePageRef(*int8, mid.view(), *fp16, back.mut()).ok());
  float worst = 0;
  for (size_t i = 0; i < src.data.size() / 2; ++i) {
    uint16_t a, b;
    std::memcpy(&a, &src.data[2 * i], 2);
    std::memcpy(&b, &back.data[2 * i], 2);
    worst = std::max(worst, std::fabs(HalfToFloat(a) - HalfToFloat(b)));
  }
  EXPECT_GT(worst, 0.0f);
  EXPECT_LT(worst, 5.0f / 127.0f);  // |x| < 5 sigma; half a step plus fp16 rounding is far below one step
}

TEST(Transcode, BatchPathMatchesReferenceBytes) {
  auto fp16 = PageGeometry::Uniform(kShape, DefaultCodec(Format::kFp16, Operand::kKey),
                                    DefaultCodec(Format::kFp16, Operand::kValue));
  auto k8v4 = PageGeometry::Uniform(kShape, DefaultCodec(Format::kInt8, Operand::kKey),
                                    DefaultCodec(Format::kInt4, Operand::kValue));
  ASSERT_TRUE(fp16.ok() && k8v4.ok());
  std::vector<Page> src, ref, fast;
  for (int i = 0; i < 9; ++i) {
    src.push_back(RandomFp16Page(*fp16, 100 + i));
    ref.emplace_back(*k8v4);
    fast.emplace_back(*k8v4);
    ASSERT_TRUE(TranscodePageRef(*fp16, src[i].view(), *k8v4, ref[i].mut()).ok());
  }
  std::vector<PageView> in;
  std::vector<MutablePageView> out;
  for (int i = 0; i < 9; ++i) {
    in.push_back(src[i].view());
    out.push_back(fast[i].mut());
  }
  ASSERT_TRUE(TranscodePagesCpu(*fp16, in, *k8v4, out, 3).ok());
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(fast[i].data, ref[i].data) << "page " << i;
    EXPECT_EQ(fast[i].params, ref[i].params) << "page " << i;
  }
}

// A plain page with KV-like values and, where `specials`, segments of zeros, constants, fp16 subnormals,
// NaN/Inf, signed zeros and all-negative values.
Page PlainPage(const PageGeometry& g, Format dtype, uint32_t seed, bool specials) {
  Page p(g);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const SegmentDims d = g.dims();
  for (int s = 0; s < g.num_segments(); ++s) {
    uint8_t* seg = p.data.data() + g.segment(s).data_offset;
    const int kind = specials ? s % 7 : 6;
    for (int i = 0; i < d.tokens * d.channels; ++i) {
      const int c = i % d.channels;
      float x = normal(rng) * ((c % 37 == 5) ? 20.0f : 1.0f + 0.01f * c);
      if (kind == 0) x = 0.0f;
      if (kind == 1) x = -1.7f;
      if (kind == 2) x = std::ldexp(normal(rng), -20);
      if (kind == 3 && i % 97 == 0) x = NAN;
      if (kind == 3 && i % 89 == 1) x = INFINITY;
      if (kind == 3 && i % 83 == 2) x = -INFINITY;
      if (kind == 4) x = i % 2 ? -0.0f : std::fabs(x);
      if (kind == 5) x = -std::fabs(x) - 1.0f;
      const uint16_t h = dtype == Format::kBf16 ? FloatToBf16(x) : FloatToHalf(x);
      std::memcpy(seg + 2 * i, &h, 2);
    }
  }
  return p;
}

PageGeometry Geometry(const LayoutShape& shape, SegmentCodec k, SegmentCodec v) {
  auto g = PageGeometry::Uniform(shape, k, v);
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  return *std::move(g);
}

// Both compiled variants of the fast path against the reference, there and back.
void ExpectFastMatchesReference(const PageGeometry& plain, Format dtype, const PageGeometry& packed) {
  const int n = 4;
  std::vector<Page> src, mid_ref, back_ref;
  for (int i = 0; i < n; ++i) {
    src.push_back(PlainPage(plain, dtype, 200 + i, i == 0));
    mid_ref.emplace_back(packed);
    back_ref.emplace_back(plain);
    ASSERT_TRUE(TranscodePageRef(plain, src[i].view(), packed, mid_ref[i].mut()).ok());
    ASSERT_TRUE(TranscodePageRef(packed, mid_ref[i].view(), plain, back_ref[i].mut()).ok());
  }
  for (CpuPath path : {CpuPath::kBest, CpuPath::kPortable}) {
    SCOPED_TRACE(CpuPathName(path));
    std::vector<Page> mid, back;
    std::vector<PageView> in, mid_in;
    std::vector<MutablePageView> mid_out, back_out;
    for (int i = 0; i < n; ++i) {
      mid.emplace_back(packed);
      back.emplace_back(plain);
      std::fill(mid[i].data.begin(), mid[i].data.end(), 0xA5);  // poison: every byte must be written
    }
    for (int i = 0; i < n; ++i) {
      in.push_back(src[i].view());
      mid_out.push_back(mid[i].mut());
      mid_in.push_back(mid[i].view());
      back_out.push_back(back[i].mut());
    }
    ASSERT_TRUE(TranscodePagesCpu(plain, in, packed, mid_out, 2, path).ok());
    ASSERT_TRUE(TranscodePagesCpu(packed, mid_in, plain, back_out, 2, path).ok());
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(mid[i].data, mid_ref[i].data) << "page " << i;
      EXPECT_EQ(mid[i].params, mid_ref[i].params) << "page " << i;
      EXPECT_EQ(back[i].data, back_ref[i].data) << "page " << i;
    }
  }
}

TEST(Transcode, FastPathMatchesReferenceForEveryFormatAndGrouping) {
  for (LayoutShape shape :
       {LayoutShape{2, 2, 128, 16}, LayoutShape{2, 2, 64, 32}, LayoutShape{1, 2, 96, 16}, LayoutShape{1, 1, 256, 64}}) {
    SCOPED_TRACE(std::to_string(shape.head_dim) + "D x " + std::to_string(shape.block_size) + "T");
    for (Format dtype : {Format::kFp16, Format::kBf16}) {
      const PageGeometry plain =
          Geometry(shape, DefaultCodec(dtype, Operand::kKey), DefaultCodec(dtype, Operand::kValue));
      for (int f = 0; f < kNumFormats; ++f) {
        const auto format = static_cast<Format>(f);
        SCOPED_TRACE(std::string(GetFormatInfo(format).name));
        ExpectFastMatchesReference(
            plain, dtype, Geometry(shape, DefaultCodec(format, Operand::kKey), DefaultCodec(format, Operand::kValue)));
      }
      for (Format f : {Format::kInt8, Format::kInt4})
        for (SegmentCodec c : {SegmentCodec{f, Grouping::kPerChannel, 0}, SegmentCodec{f, Grouping::kPerToken, 0},
                               SegmentCodec{f, Grouping::kPerToken, 16}, SegmentCodec{f, Grouping::kPerToken, 32}})
          ExpectFastMatchesReference(plain, dtype, Geometry(shape, c, c));
    }
  }
}

TEST(Transcode, FastPathQuantizedToQuantizedMatchesReference) {
  const LayoutShape shape{2, 2, 128, 16};
  const PageGeometry fp16 =
      Geometry(shape, DefaultCodec(Format::kFp16, Operand::kKey), DefaultCodec(Format::kFp16, Operand::kValue));
  const PageGeometry int8 =
      Geometry(shape, DefaultCodec(Format::kInt8, Operand::kKey), DefaultCodec(Format::kInt8, Operand::kValue));
  const PageGeometry fp8 =
      Geometry(shape, DefaultCodec(Format::kFp8E5m2, Operand::kKey), DefaultCodec(Format::kInt4, Operand::kValue));
  Page src = PlainPage(fp16, Format::kFp16, 300, true), a(int8), ref(fp8), fast(fp8);
  ASSERT_TRUE(TranscodePageRef(fp16, src.view(), int8, a.mut()).ok());
  ASSERT_TRUE(TranscodePageRef(int8, a.view(), fp8, ref.mut()).ok());
  const PageView in[] = {a.view()};
  const MutablePageView out[] = {fast.mut()};
  ASSERT_TRUE(TranscodePagesCpu(int8, in, fp8, out).ok());
  EXPECT_EQ(fast.data, ref.data);
  EXPECT_EQ(fast.params, ref.params);
}

// fp4 (two-level scales) on either side of a quantized-to-quantized transcode, and K8V-fp4.
TEST(Transcode, FastPathFp4ToAndFromQuantizedMatchesReference) {
  for (LayoutShape shape : {LayoutShape{2, 2, 128, 16}, LayoutShape{1, 2, 64, 64}}) {
    const PageGeometry fp16 =
        Geometry(shape, DefaultCodec(Format::kFp16, Operand::kKey), DefaultCodec(Format::kFp16, Operand::kValue));
    const PageGeometry int8 =
        Geometry(shape, DefaultCodec(Format::kInt8, Operand::kKey), DefaultCodec(Format::kInt8, Operand::kValue));
    const PageGeometry fp4 = Geometry(shape, DefaultCodec(Format::kFp4E2m1, Operand::kKey),
                                      DefaultCodec(Format::kFp4E2m1, Operand::kValue));
    const PageGeometry k8vfp4 =
        Geometry(shape, DefaultCodec(Format::kInt8, Operand::kKey), DefaultCodec(Format::kFp4E2m1, Operand::kValue));
    Page src = PlainPage(fp16, Format::kFp16, 301, true), a(int8), b(fp4);
    ASSERT_TRUE(TranscodePageRef(fp16, src.view(), int8, a.mut()).ok());
    ASSERT_TRUE(TranscodePageRef(fp16, src.view(), fp4, b.mut()).ok());
    for (auto [from, page, to] : {std::tuple{&int8, &a, &fp4}, std::tuple{&fp4, &b, &int8}, std::tuple{&fp4, &b, &k8vfp4},
                                  std::tuple{&int8, &a, &k8vfp4}}) {
      Page ref(*to), fast(*to);
      ASSERT_TRUE(TranscodePageRef(*from, page->view(), *to, ref.mut()).ok());
      const PageView in[] = {page->view()};
      const MutablePageView out[] = {fast.mut()};
      ASSERT_TRUE(TranscodePagesCpu(*from, in, *to, out).ok());
      EXPECT_EQ(fast.data, ref.data);
      EXPECT_EQ(fast.params, ref.params);
    }
  }
}

TEST(Transcode, BatchRejectsMissingParameterRecords) {
  const LayoutShape shape{2, 2, 64, 16};
  const PageGeometry fp16 =
      Geometry(shape, DefaultCodec(Format::kFp16, Operand::kKey), DefaultCodec(Format::kFp16, Operand::kValue));
  const PageGeometry int8 =
      Geometry(shape, DefaultCodec(Format::kInt8, Operand::kKey), DefaultCodec(Format::kInt8, Operand::kValue));
  Page src(fp16), dst(int8);
  const PageView in[] = {src.view()};
  const MutablePageView no_params[] = {{dst.data.data(), nullptr}};
  EXPECT_FALSE(TranscodePagesCpu(fp16, in, int8, no_params).ok());
  const MutablePageView two[] = {dst.mut(), dst.mut()};
  EXPECT_FALSE(TranscodePagesCpu(fp16, in, int8, two).ok());
}

TEST(Transcode, RejectsDifferentShapes) {
  auto a = PageGeometry::Uniform(kShape, {}, {});
  auto b = PageGeometry::Uniform({4, 2, 128, 16}, {}, {});
  ASSERT_TRUE(a.ok() && b.ok());
  Page pa(*a), pb(*b);
  EXPECT_FALSE(TranscodePageRef(*a, pa.view(), *b, pb.mut()).ok());
}

}  // namespace
}  // namespace kvtier
