#include "kernels/format.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/segment.h"

namespace kvtier {
namespace {

TEST(Fp8, EveryE4m3CodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const float v = Fp8E4m3::Decode(static_cast<uint8_t>(c));
    if (std::isnan(v)) {
      EXPECT_EQ(c & 0x7f, 0x7f);
      continue;
    }
    EXPECT_EQ(Fp8E4m3::Encode(v), c) << "code " << c << " value " << v;
  }
  EXPECT_EQ(Fp8E4m3::MaxFinite(), 448.0f);
}

TEST(Fp8, EveryE5m2CodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const float v = Fp8E5m2::Decode(static_cast<uint8_t>(c));
    if (std::isnan(v) || std::isinf(v)) continue;
    EXPECT_EQ(Fp8E5m2::Encode(v), c) << "code " << c << " value " << v;
  }
  EXPECT_EQ(Fp8E5m2::MaxFinite(), 57344.0f);
}

TEST(Fp8, RoundsToNearestEvenAndSaturates) {
  // 1.0625 lies halfway between 1.0 (mantissa 000) and 1.125 (001): ties to even -> 1.0.
  EXPECT_EQ(Fp8E4m3::Decode(Fp8E4m3::Encode(1.0625f)), 1.0f);
  // 1.1875 lies halfway between 1.125 (001) and 1.25 (010): ties to even -> 1.25.
  EXPECT_EQ(Fp8E4m3::Decode(Fp8E4m3::Encode(1.1875f)), 1.25f);
  EXPECT_EQ(Fp8E4m3::Decode(Fp8E4m3::Encode(1000.0f)), 448.0f);
  EXPECT_EQ(Fp8E4m3::Decode(Fp8E4m3::Encode(-INFINITY)), -448.0f);
  EXPECT_EQ(Fp8E5m2::Decode(Fp8E5m2::Encode(1e9f)), 57344.0f);
  EXPECT_TRUE(std::isnan(Fp8E4m3::Decode(Fp8E4m3::Encode(NAN))));
  // Smallest subnormal of E4M3 is 2^-9; half of it ties to even (zero), slightly more rounds up.
  EXPECT_EQ(Fp8E4m3::Encode(std::ldexp(1.0f, -10)), 0);
  EXPECT_EQ(Fp8E4m3::Encode(std::ldexp(1.0f, -10) * 1.01f), 1);
  EXPECT_EQ(Fp8E4m3::Encode(-0.0f), 0x80);
}

// The definition of round-to-nearest-even with saturation, by search over the codes.
template <class Mini>
uint8_t NearestCode(float x) {
  if (std::isnan(x)) return 0x7f | (std::signbit(x) ? 0x80 : 0);
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  int max_code = 0;
  for (int c = 0; c < 0x80; ++c)
    if (Mini::Decode(static_cast<uint8_t>(c)) == Mini::MaxFinite()) max_code = c;
  if (a >= Mini::MaxFinite()) return static_cast<uint8_t>(sign | max_code);
  int best = 0;
  for (int c = 1; c < 0x80; ++c) {
    const float v = Mini::Decode(static_cast<uint8_t>(c));
    if (!(v <= Mini::MaxFinite())) continue;
    const double d = std::fabs(static_cast<double>(v) - a), db = std::fabs(static_cast<double>(Mini::Decode(best)) - a);
    if (d < db || (d == db && (c & 1) == 0)) best = c;
  }
  return static_cast<uint8_t>(sign | best);
}

template <class Mini>
void ExpectEncodeIsNearestEven(const char* name) {
  std::vector<float> xs;
  for (uint32_t h = 0; h < 0x10000; ++h) xs.push_back(HalfToFloat(static_cast<uint16_t>(h)));
  for (int c = 0; c < 0x7f; ++c) {  // midpoints between neighbouring codes and their neighbours
    const float lo = Mini::Decode(static_cast<uint8_t>(c)), hi = Mini::Decode(static_cast<uint8_t>(c + 1));
    if (!(hi <= Mini::MaxFinite())) continue;
    const float mid = static_cast<float>((static_cast<double>(lo) + hi) / 2);
    xs.insert(xs.end(), {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY), -mid});
  }
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::uniform_int_distribution<int> exp(-30, 20);
  for (int i = 0; i < 200000; ++i) xs.push_back(std::ldexp(mant(rng), exp(rng)) * (i % 2 ? -1.0f : 1.0f));
  xs.insert(xs.end(), {INFINITY, -INFINITY, 3e38f, -3e38f, 1e-40f, -1e-45f});
  int bad = 0;
  for (float x : xs)
    if (Mini::Encode(x) != NearestCode<Mini>(x) && ++bad < 5)
      ADD_FAILURE() << name << ": Encode(" << x << ") = " << int(Mini::Encode(x)) << ", nearest-even is "
                    << int(NearestCode<Mini>(x));
  EXPECT_EQ(bad, 0);
}

TEST(Fp8, EncodeIsRoundToNearestEvenWithSaturation) {
  ExpectEncodeIsNearestEven<Fp8E4m3>("e4m3");
  ExpectEncodeIsNearestEven<Fp8E5m2>("e5m2");
}

TEST(Half, SoftwareConversionMatchesDefinition) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // rounds to Inf
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even
  for (uint32_t h = 0; h < 0x7c00; ++h) EXPECT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))), h);
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
}

TEST(Half, DirectedRoundingBracketsTheValue) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1000.0f, 1000.0f);
  for (int i = 0; i < 10000; ++i) {
    const float x = u(rng);
    EXPECT_LE(HalfToFloat(FloatToHalfRoundDown(x)), x);
    if (x > 0) {
      EXPECT_GE(HalfToFloat(FloatToHalfRoundUp(x)), x);
    }
  }
}

template <Format F>
float MaxRoundTripError(const SegmentCodec& codec, SegmentDims d, const std::vector<float>& v) {
  std::vector<uint8_t> data(SegmentDataBytes(F, d)), params(SegmentParamBytes(codec, d) + 4);
  std::vector<float> back(v.size());
  QuantizeSegmentRef<F>(codec, d, v.data(), data.data(), params.data());
  DequantizeSegmentRef<F>(codec, d, data.data(), params.data(), back.data());
  float err = 0;
  for (size_t i = 0; i < v.size(); ++i) err = std::max(err, std::fabs(back[i] - v[i]));
  return err;
}

TEST(Codec, Int8PerChannelErrorIsHalfAStep) {
  const SegmentDims d{16, 128};
  std::mt19937 rng(1);
  std::normal_distribution<float> n(0.0f, 2.0f);
  std::vector<float> v(16 * 128);
  for (auto& x : v) x = n(rng);
  float absmax = 0;
  for (float x : v) absmax = std::max(absmax, std::fabs(x));
  const float err = MaxRoundTripError<Format::kInt8>(DefaultCodec(Format::kInt8, Operand::kKey), d, v);
  EXPECT_LE(err, absmax / 127.0f * 0.5f * 1.01f);
  EXPECT_GT(err, 0.0f);
}

TEST(Codec, Int4PerTokenErrorIsHalfAStep) {
  const SegmentDims d{16, 128};
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-3.0f, 5.0f);
  std::vector<float> v(16 * 128);
  for (auto& x : v) x = u(rng);
  const float err = MaxRoundTripError<Format::kInt4>(DefaultCodec(Format::kInt4, Operand::kValue), d, v);
  EXPECT_LE(err, 8.0f / 15.0f * 0.5f * 1.02f);
}

TEST(Codec, AllZeroBlockDecodesToZeroInEveryFormat) {
  const SegmentDims d{16, 64};
  std::vector<float> v(16 * 64, 0.0f);
  for (Format f : {Format::kFp8E4m3, Format::kFp8E5m2, Format::kInt8, Format::kInt4}) {
    DispatchFormat(f, [&](auto tag) {
      EXPECT_EQ(MaxRoundTripError<decltype(tag)::kFormat>(DefaultCodec(f, Operand::kKey), d, v), 0.0f)
          << GetFormatInfo(f).name;
    });
  }
}

TEST(Codec, NonFiniteInputsHaveDefinedCodes) {
  const SegmentDims d{16, 64};
  std::vector<float> v(16 * 64, 1.0f);
  v[0] = NAN;
  v[1] = INFINITY;
  v[2] = -INFINITY;
  v[3] = -2.0f;
  const SegmentCodec codec = DefaultCodec(Format::kInt8, Operand::kValue);  // per token: row 0 has them all
  std::vector<uint8_t> data(SegmentDataBytes(Format::kInt8, d)), params(SegmentParamBytes(codec, d));
  std::vector<float> back(v.size());
  QuantizeSegmentRef<Format::kInt8>(codec, d, v.data(), data.data(), params.data());
  DequantizeSegmentRef<Format::kInt8>(codec, d, data.data(), params.data(), back.data());
  EXPECT_EQ(back[0], 0.0f);           // NaN -> 0
  EXPECT_NEAR(back[1], 2.0f, 0.02f);  // +Inf -> top of the finite range (absmax 2)
  EXPECT_NEAR(back[2], -2.0f, 0.02f);
  EXPECT_NEAR(back[3], -2.0f, 0.02f);
  EXPECT_NEAR(back[5], 1.0f, 0.01f);
}

TEST(Codec, ConstantInt4GroupDecodesToTheConstant) {
  const SegmentDims d{16, 64};
  std::vector<float> v(16 * 64, 0.75f);
  EXPECT_EQ(MaxRoundTripError<Format::kInt4>(DefaultCodec(Format::kInt4, Operand::kKey), d, v), 0.0f);
}

TEST(Codec, ConstantInt8AndFp8GroupsDecodeWithinTheirBounds) {
  const SegmentDims d{16, 64};
  for (float c : {0.3f, -1.7f, 1000.0f, 6.0e-5f}) {
    std::vector<float> v(16 * 64, HalfToFloat(FloatToHalf(c)));
    const float x = v[0];
    const float e8 = MaxRoundTripError<Format::kInt8>(DefaultCodec(Format::kInt8, Operand::kKey), d, v);
    // 127 s with s rounded up to fp16: relative 2^-10, or one fp16 subnormal step of s when s is that small
    EXPECT_LE(e8, std::fabs(x) * std::ldexp(1.0f, -10) * 1.01f + 127 * std::ldexp(1.0f, -24)) << c;
    const float e4 = MaxRoundTripError<Format::kFp8E4m3>(DefaultCodec(Format::kFp8E4m3, Operand::kKey), d, v);
    EXPECT_LE(e4, std::fabs(x) * 1e-6f) << c;  // max_finite * (m / max_finite): fp32 rounding only
  }
}

TEST(Codec, AllNonFiniteGroupsDecodeToZero) {
  const SegmentDims d{16, 64};
  std::vector<float> v(16 * 64);
  for (size_t i = 0; i < v.size(); ++i) v[i] = i % 3 == 0 ? NAN : (i % 3 == 1 ? INFINITY : -INFINITY);
  for (Format f : {Format::kFp8E4m3, Format::kFp8E5m2, Format::kInt8, Format::kInt4})
    DispatchFormat(f, [&](auto tag) {
      constexpr Format F = decltype(tag)::kFormat;
      const SegmentCodec codec = DefaultCodec(f, Operand::kValue);
      std::vector<uint8_t> data(SegmentDataBytes(F, d)), params(SegmentParamBytes(codec, d));
      std::vector<float> back(v.size());
      QuantizeSegmentRef<F>(codec, d, v.data(), data.data(), params.data());
      DequantizeSegmentRef<F>(codec, d, data.data(), params.data(), back.data());
      for (float b : back) EXPECT_EQ(b, 0.0f) << GetFormatInfo(f).name;
    });
}

TEST(Codec, NonFiniteElementsInInt4AndFp8) {
  const SegmentDims d{16, 64};
  std::vector<float> v(16 * 64, 1.0f);
  for (int t = 0; t < 16; ++t) v[t * 64 + 1] = -3.0f;  // channel 1 spans [-3, 1]
  v[0] = NAN;
  v[64] = INFINITY;
  v[128] = -INFINITY;
  {
    const SegmentCodec codec = DefaultCodec(Format::kInt4, Operand::kKey);  // per channel: channel 0 is {1}
    std::vector<uint8_t> data(SegmentDataBytes(Format::kInt4, d)), params(SegmentParamBytes(codec, d));
    std::vector<float> back(v.size());
    QuantizeSegmentRef<Format::kInt4>(codec, d, v.data(), data.data(), params.data());
    DequantizeSegmentRef<Format::kInt4>(codec, d, data.data(), params.data(), back.data());
    EXPECT_EQ(back[0], 1.0f);    // NaN -> code 0 -> the offset (the group's only finite value, 1)
    EXPECT_EQ(back[64], 1.0f);   // +Inf saturates to the top of [1, 1]
    EXPECT_EQ(back[128], 1.0f);  // -Inf to the bottom
    EXPECT_NEAR(back[1], -3.0f, 0.15f);
  }
  {
    const SegmentCodec codec = DefaultCodec(Format::kFp8E4m3, Operand::kKey);
    std::vector<uint8_t> data(SegmentDataBytes(Format::kFp8E4m3, d)), params(SegmentParamBytes(codec, d));
    std::vector<float> back(v.size());
    QuantizeSegmentRef<Format::kFp8E4m3>(codec, d, v.data(), data.data(), params.data());
    DequantizeSegmentRef<Format::kFp8E4m3>(codec, d, data.data(), params.data(), back.data());
    EXPECT_EQ(back[0], 0.0f);
    EXPECT_FLOAT_EQ(back[64], 3.0f);  // saturates at max_finite * s = absmax
    EXPECT_FLOAT_EQ(back[128], -3.0f);
  }
}

TEST(Codec, SubnormalInputsKeepTheirPrecision) {
  const SegmentDims d{16, 64};
  std::mt19937 rng(5);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> v(16 * 64);
  for (auto& x : v) x = HalfToFloat(FloatToHalf(std::ldexp(n(rng), -18)));  // fp16 subnormals
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  const float err = MaxRoundTripError<Format::kInt8>(DefaultCodec(Format::kInt8, Operand::kValue), d, v);
  EXPECT_GT(m, 0.0f);
  EXPECT_LE(err, m / 127.0f * 0.5f + std::ldexp(1.0f, -24));  // half a step of a (subnormal) fp16 scale
}

TEST(Codec, NegativeZeroMinimumStoresAPositiveZeroOffset) {
  const SegmentDims d{16, 64};
  const SegmentCodec codec = DefaultCodec(Format::kInt4, Operand::kValue);
  std::vector<float> a(16 * 64, 0.5f), b;
  for (size_t i = 0; i < a.size(); i += 2) a[i] = (i / 2) % 2 ? -0.0f : 0.0f;  // both zeros in every group
  b.assign(a.rbegin(), a.rend());
  for (const auto* v : {&a, &b}) {
    std::vector<uint8_t> data(SegmentDataBytes(Format::kInt4, d)), params(SegmentParamBytes(codec, d));
    QuantizeSegmentRef<Format::kInt4>(codec, d, v->data(), data.data(), params.data());
    for (size_t g = 0; g < params.size(); g += 4) EXPECT_EQ(params[g + 2] | (params[g + 3] << 8), 0) << g;
  }
}

TEST(Format, NamesParseBack) {
  for (int i = 0; i < kNumFormats; ++i) {
    const auto f = static_cast<Format>(i);
    ASSERT_TRUE(ParseFormat(GetFormatInfo(f).name).has_value());
    EXPECT_EQ(*ParseFormat(GetFormatInfo(f).name), f);
  }
  EXPECT_FALSE(ParseFormat("int3").has_value());
}

// A block paged out again after its clean copy was dropped re-quantizes its own dequantized (fp16) values.
// That must give back the same values, or a block moving often drifts step by step (the reliability
// campaign measured 4-5 int8 steps after tens of moves when the scale was always rounded up).
TEST(Codec, Int8RequantizationOfDequantizedFp16ValuesIsIdempotent) {
  const SegmentDims d{16, 64};
  std::mt19937 rng(9);
  for (Operand op : {Operand::kKey, Operand::kValue}) {
    const SegmentCodec codec = DefaultCodec(Format::kInt8, op);
    for (int trial = 0; trial < 50; ++trial) {
      std::normal_distribution<float> n(0.0f, 0.1f + static_cast<float>(trial));
      std::vector<float> v(16 * 64);
      for (auto& x : v) x = HalfToFloat(FloatToHalf(n(rng)));
      std::vector<uint8_t> data(SegmentDataBytes(Format::kInt8, d)), params(SegmentParamBytes(codec, d));
      std::vector<float> first(v.size()), back(v.size());
      QuantizeSegmentRef<Format::kInt8>(codec, d, v.data(), data.data(), params.data());
      DequantizeSegmentRef<Format::kInt8>(codec, d, data.data(), params.data(), first.data());
      for (auto& x : first) x = HalfToFloat(FloatToHalf(x));  // the resident page is fp16
      back = first;
      for (int cycle = 0; cycle < 20; ++cycle) {
        QuantizeSegmentRef<Format::kInt8>(codec, d, back.data(), data.data(), params.data());
        DequantizeSegmentRef<Format::kInt8>(codec, d, data.data(), params.data(), back.data());
        for (auto& x : back) x = HalfToFloat(FloatToHalf(x));
      }
      float drift = 0;
      for (size_t i = 0; i < v.size(); ++i) drift = std::max(drift, std::fabs(back[i] - first[i]));
      EXPECT_EQ(drift, 0.0f) << "trial " << trial << (op == Operand::kKey ? " K" : " V");
    }
  }
}

}  // namespace
}  // namespace kvtier
