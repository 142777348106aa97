#include "kernels/transcode.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
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

TEST(Transcode, RejectsDifferentShapes) {
  auto a = PageGeometry::Uniform(kShape, {}, {});
  auto b = PageGeometry::Uniform({4, 2, 128, 16}, {}, {});
  ASSERT_TRUE(a.ok() && b.ok());
  Page pa(*a), pb(*b);
  EXPECT_FALSE(TranscodePageRef(*a, pa.view(), *b, pb.mut()).ok());
}

}  // namespace
}  // namespace kvtier
