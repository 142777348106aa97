// fp4_e2m1: the E2M1 element codec and the E4M3 round-up scale encoder bit for bit against independent
// definitions (a search over the codes, and ml_dtypes' float4_e2m1fn), and the block format (NVFP4
// arrangement) against its stated layout, defined behaviour and error bound (docs/formats.md).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/format.h"
#include "kernels/fp4.h"
#include "kernels/page_geometry.h"
#include "kernels/precision_policy.h"
#include "kernels/segment.h"

namespace kvtier {
namespace {

using T4 = FormatTraits<Format::kFp4E2m1>;

float Bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// The E2M1 magnitudes, by code (0..7); the definition the codec is checked against.
constexpr double kE2m1[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};

// Round to nearest, ties to the even code, saturating at 6; NaN -> +0; sign kept (also for zero). By
// search in double precision: independent of the bit manipulations in kernels/fp4.h.
uint32_t NearestE2m1(float x) {
  if (std::isnan(x)) return 0;
  const uint32_t sign = std::signbit(x) ? 8u : 0u;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 6.0) return sign | 7u;
  uint32_t best = 0;
  for (uint32_t c = 1; c < 8; ++c) {
    const double d = std::fabs(a - kE2m1[c]), db = std::fabs(a - kE2m1[best]);
    if (d < db || (d == db && (c & 1u) == 0)) best = c;
  }
  return sign | best;
}

TEST(Fp4E2m1, EveryCodeDecodesToTheE2m1Table) {
  for (uint32_t c = 0; c < 16; ++c) {
    const float v = Fp4E2m1::Decode(c);
    EXPECT_EQ(std::fabs(v), static_cast<float>(kE2m1[c & 7])) << c;
    EXPECT_EQ(std::signbit(v), (c & 8) != 0) << c;
    EXPECT_EQ(Fp4E2m1::Encode(v), c) << "code " << c << " must round-trip";
  }
}

TEST(Fp4E2m1, HalfScaledDecodeIsExactForEveryByte) {
  for (uint32_t w0 = 0; w0 < 256; ++w0) {
    const uint32_t w = w0 | ((255 - w0) << 8) | ((w0 * 37 & 255) << 16) | ((w0 * 101 & 255) << 24);
    uint32_t h2[4];
    Fp4E2m1::DecodeWordToHalf2Scaled(w, h2);
    for (int j = 0; j < 8; ++j) {
      const uint16_t bits = static_cast<uint16_t>(h2[j / 2] >> (16 * (j & 1)));
      const float v = HalfToFloat(bits) * 16384.0f;
      const float want = Fp4E2m1::Decode((w >> (4 * j)) & 0xfu);
      EXPECT_EQ(v, want) << std::hex << w << " code " << j;
      EXPECT_EQ(std::signbit(v), std::signbit(want));
    }
  }
}

TEST(Fp4E2m1, SpecialInputs) {
  EXPECT_EQ(Fp4E2m1::Encode(0.0f), 0u);
  EXPECT_EQ(Fp4E2m1::Encode(-0.0f), 8u);                 // signed zero kept
  EXPECT_EQ(Fp4E2m1::Encode(-0.1f), 8u);                 // rounds to -0
  EXPECT_EQ(Fp4E2m1::Encode(NAN), 0u);                   // no NaN code: +0
  EXPECT_EQ(Fp4E2m1::Encode(-NAN), 0u);
  EXPECT_EQ(Fp4E2m1::Encode(INFINITY), 7u);              // saturates
  EXPECT_EQ(Fp4E2m1::Encode(-INFINITY), 15u);
  EXPECT_EQ(Fp4E2m1::Encode(3.4e38f), 7u);
  EXPECT_EQ(Fp4E2m1::Encode(Bits(1)), 0u);               // fp32 subnormal
  EXPECT_EQ(Fp4E2m1::Encode(Bits(0x80000001u)), 8u);
  // Ties go to the even code.
  const float ties[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  const uint32_t want[] = {0, 2, 2, 4, 4, 6, 6};
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(Fp4E2m1::Encode(ties[i]), want[i]) << ties[i];
    EXPECT_EQ(Fp4E2m1::Encode(-ties[i]), want[i] | 8u) << -ties[i];
  }
}

// Every fp32 whose magnitude is in [2^-3, 2^4) (both signs; 117 M inputs): this range holds every
// rounding boundary and the saturation point, so the bit tricks are checked on every input where a
// decision is made. Below 2^-3 and above 2^4 a sampled sweep of every exponent.
TEST(Fp4E2m1, EncodeMatchesTheDefinitionOnEveryFloatAroundTheRange) {
  int64_t bad = 0;
  for (uint32_t b = 0x3e000000u; b < 0x41800000u; ++b) {
    const float x = Bits(b);
    bad += Fp4E2m1::Encode(x) != NearestE2m1(x);
    bad += Fp4E2m1::Encode(-x) != NearestE2m1(-x);
    if (bad > 0 && bad < 4) ADD_FAILURE() << "x=" << x;
  }
  EXPECT_EQ(bad, 0);
  for (uint64_t b = 0; b <= 0xffffffffu; b += 4099) {  // every exponent, NaNs and Infs included
    const float x = Bits(static_cast<uint32_t>(b));
    EXPECT_EQ(Fp4E2m1::Encode(x), NearestE2m1(x)) << std::hex << b;
  }
}

TEST(Fp4E2m1, AgreesWithMlDtypes) {
  std::ifstream in(KVTIER_FP4_VECTORS);
  ASSERT_TRUE(in.good()) << "cannot read " << KVTIER_FP4_VECTORS;
  int codes = 0, encs = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    std::string kind;
    uint32_t a = 0, b = 0;
    ss >> kind;
    if (kind == "code") {
      ss >> a >> std::hex >> b;
      ASSERT_FALSE(ss.fail()) << line;
      const float v = Fp4E2m1::Decode(a);
      uint32_t vb;
      std::memcpy(&vb, &v, 4);
      EXPECT_EQ(vb, b) << line;
      ++codes;
    } else {
      ss >> std::hex >> a >> std::dec >> b;
      ASSERT_FALSE(ss.fail()) << line;
      EXPECT_EQ(Fp4E2m1::Encode(Bits(a)), b) << line;
      ++encs;
    }
  }
  EXPECT_EQ(codes, 16);
  EXPECT_GT(encs, 5000);
}

// The definition of the round-up scale encoder: the smallest E4M3 code whose value is >= t.
uint32_t SmallestE4m3AtLeast(float t) {
  for (uint32_t c = 0; c < 0x7e; ++c)
    if (Fp8E4m3::Decode(static_cast<uint8_t>(c)) >= t) return c;
  return 0x7e;
}

TEST(E4m3RoundUp, MatchesTheDefinition) {
  std::vector<float> ts;
  for (uint32_t h = 0; h < 0x7c00u; ++h) ts.push_back(HalfToFloat(static_cast<uint16_t>(h)));  // every fp16
  for (uint32_t c = 0; c <= 0x7e; ++c) {
    const float v = Fp8E4m3::Decode(static_cast<uint8_t>(c));
    ts.insert(ts.end(), {v, std::nextafter(v, 0.0f), std::nextafter(v, 1000.0f)});
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> e(-30.0f, 9.0f);
  for (int i = 0; i < 100000; ++i) ts.push_back(std::exp2(e(rng)));
  int bad = 0;
  for (float t : ts) {
    if (!(t <= 448.0f)) continue;
    const uint32_t got = E4m3CodeRoundUp(t);
    if (got != SmallestE4m3AtLeast(t) && ++bad < 5) ADD_FAILURE() << "t=" << t << " got " << got;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(E4m3CodeRoundUp(448.0f), 0x7eu);
  EXPECT_EQ(E4m3CodeRoundUp(1e9f), 0x7eu);  // saturates
  EXPECT_EQ(E4m3CodeRoundUp(INFINITY), 0x7eu);
  EXPECT_EQ(E4m3CodeRoundUp(NAN), 0x7eu);
  EXPECT_EQ(E4m3CodeRoundUp(0.0f), 0u);
  EXPECT_EQ(E4m3CodeRoundUp(1e-30f), 1u);  // never rounds a positive target to 0
}

// ---- The block format -------------------------------------------------------------------------------

struct Coded {
  std::vector<uint8_t> data, params;
  std::vector<float> back;
};

Coded RoundTrip(const SegmentCodec& c, SegmentDims d, const std::vector<float>& v) {
  Coded r{std::vector<uint8_t>(SegmentDataBytes(c.format, d)), std::vector<uint8_t>(SegmentParamBytes(c, d)),
          std::vector<float>(v.size())};
  QuantizeSegmentRef<Format::kFp4E2m1>(c, d, v.data(), r.data.data(), r.params.data());
  DequantizeSegmentRef<Format::kFp4E2m1>(c, d, r.data.data(), r.params.data(), r.back.data());
  return r;
}

float SegmentScaleOf(const SegmentCodec& c, SegmentDims d, const Coded& r) {
  return LoadSegmentScale<Format::kFp4E2m1>(c, d, r.params.data());
}

TEST(Fp4Block, ParameterLayoutAndDefaults) {
  const SegmentDims d{32, 64};
  const SegmentCodec k = DefaultCodec(Format::kFp4E2m1, Operand::kKey);
  const SegmentCodec v = DefaultCodec(Format::kFp4E2m1, Operand::kValue);
  EXPECT_EQ(k, (SegmentCodec{Format::kFp4E2m1, Grouping::kPerChannel, 16}));
  EXPECT_EQ(v, (SegmentCodec{Format::kFp4E2m1, Grouping::kPerToken, 16}));
  EXPECT_EQ(GetFormatInfo(Format::kFp4E2m1).name, "fp4_e2m1");
  EXPECT_EQ(ParseFormat("fp4_e2m1"), Format::kFp4E2m1);
  // 32 x 64 values: 1024 bytes of codes, 128 group bytes + 4 bytes of segment scale.
  EXPECT_EQ(SegmentDataBytes(Format::kFp4E2m1, d), 1024u);
  EXPECT_EQ(NumGroups(k, d), 128);
  EXPECT_EQ(NumGroups(v, d), 128);
  EXPECT_EQ(SegmentParamBytes(k, d), 132u);
  EXPECT_EQ(SegmentScaleOffset<Format::kFp4E2m1>(k, d), 128);
  // K: groups are (token group, channel), token-group major. V: (token, 16 channels).
  EXPECT_EQ(GroupOf(k, d, 0, 5), 5);
  EXPECT_EQ(GroupOf(k, d, 15, 5), 5);
  EXPECT_EQ(GroupOf(k, d, 16, 5), 64 + 5);
  EXPECT_EQ(GroupOf(v, d, 3, 17), 3 * 4 + 1);

  // K, channel c of token group tg has values up to (c + 1) * (tg + 1); the segment max is 128.
  std::vector<float> x(32 * 64);
  for (int t = 0; t < 32; ++t)
    for (int c = 0; c < 64; ++c) x[t * 64 + c] = (t % 2 ? -1.0f : 1.0f) * (c + 1) * (t / 16 + 1) * (t % 16 + 1) / 16.0f;
  const Coded r = RoundTrip(k, d, x);
  const float g = SegmentScaleOf(k, d, r);
  EXPECT_EQ(g, 128.0f / 2688.0f);
  EXPECT_EQ(r.params[64 + 63], 0x7e);  // the group holding the segment max gets scale 448
  for (int tg = 0; tg < 2; ++tg)
    for (int c = 0; c < 64; ++c) {
      const float m = (c + 1) * (tg + 1);
      const uint8_t s = r.params[tg * 64 + c];
      EXPECT_EQ(s, E4m3CodeRoundUp(m / (g * 6.0f))) << tg << " " << c;
    }
  // Codes are the E2M1 encodings of x / S, two per byte, low nibble first.
  for (int i : {0, 1, 64 * 17 + 9, 2047}) {
    const QParams p = T4::FromCode(r.params[GroupOf(k, d, i / 64, i % 64)], g);
    const uint32_t code = (r.data[i / 2] >> (4 * (i & 1))) & 0xfu;
    EXPECT_EQ(code, Fp4E2m1::Encode(x[i] * p.inv_scale)) << i;
    EXPECT_EQ(r.back[i], Fp4E2m1::Decode(code) * p.scale) << i;
  }
}

// The stated bound (docs/formats.md): |e| <= max(|x|, S) / 4 up to fp32 rounding, with
// S <= 1.125 m / 6 + 2^-9 G (rounding the E4M3 scale up) and |x| <= 6 S (no finite value clipped).
void ExpectWithinBound(const SegmentCodec& c, SegmentDims d, const std::vector<float>& x, const char* what) {
  const Coded r = RoundTrip(c, d, x);
  const float g = SegmentScaleOf(c, d, r);
  float seg_max = 0.0f;
  for (float v : x)
    if (std::isfinite(v)) seg_max = std::max(seg_max, std::fabs(v));
  EXPECT_EQ(g, seg_max / 2688.0f) << what;
  std::vector<float> group_max(NumGroups(c, d), 0.0f);
  for (int t = 0; t < d.tokens; ++t)
    for (int ch = 0; ch < d.channels; ++ch) {
      float& m = group_max[GroupOf(c, d, t, ch)];
      m = std::max(m, std::fabs(x[t * d.channels + ch]));
    }
  constexpr double kRel = 1.0 + 1.0 / (1 << 20);
  int bad = 0;
  for (int t = 0; t < d.tokens; ++t)
    for (int ch = 0; ch < d.channels; ++ch) {
      const int i = t * d.channels + ch, grp = GroupOf(c, d, t, ch);
      const double s = T4::FromCode(r.params[grp], g).scale;
      const double m = group_max[grp];
      const bool ok = std::fabs(double(r.back[i]) - x[i]) <= std::max(std::fabs(double(x[i])), s) / 4 * kRel &&
                      s <= (1.125 * m / 6 + std::ldexp(double(g), -9)) * kRel && std::fabs(x[i]) <= 6 * s * kRel;
      if (!ok && ++bad < 5)
        ADD_FAILURE() << what << ": x=" << x[i] << " back=" << r.back[i] << " S=" << s << " m=" << m << " G=" << g;
    }
  EXPECT_EQ(bad, 0) << what;
}

TEST(Fp4Block, RoundTripStaysWithinTheStatedBound) {
  std::mt19937 rng(11);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::student_t_distribution<float> heavy(3.0f);
  for (SegmentDims d : {SegmentDims{16, 128}, SegmentDims{32, 96}, SegmentDims{64, 256}, SegmentDims{16, 64}})
    for (Operand op : {Operand::kKey, Operand::kValue}) {
      const SegmentCodec c = DefaultCodec(Format::kFp4E2m1, op);
      for (int trial = 0; trial < 4; ++trial) {
        std::vector<float> x(size_t(d.tokens) * d.channels);
        for (int t = 0; t < d.tokens; ++t)
          for (int ch = 0; ch < d.channels; ++ch) {
            const float outlier = ch % 29 == 3 ? 40.0f : 1.0f;  // K-like outlier channels
            float v = (trial % 2 ? heavy(rng) : n(rng)) * outlier;
            if (trial == 2) v = std::ldexp(v, -20);  // tiny: fp32 values far below any fp16 normal
            if (trial == 3 && (t * d.channels + ch) % 61 == 0) v *= 1e4f;  // rare spikes
            x[t * d.channels + ch] = v;
          }
        ExpectWithinBound(c, d, x, op == Operand::kKey ? "K" : "V");
      }
    }
}

TEST(Fp4Block, DefinedBehaviourOfSpecialGroups) {
  const SegmentDims d{16, 64};
  const SegmentCodec v = DefaultCodec(Format::kFp4E2m1, Operand::kValue);
  {  // all zero (with negative zeros): scales 0, decodes to exactly +-0
    std::vector<float> x(16 * 64, 0.0f);
    for (size_t i = 0; i < x.size(); i += 3) x[i] = -0.0f;
    const Coded r = RoundTrip(v, d, x);
    EXPECT_EQ(SegmentScaleOf(v, d, r), 0.0f);
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_EQ(r.back[i], 0.0f);
      EXPECT_EQ(std::signbit(r.back[i]), std::signbit(x[i])) << i;
    }
  }
  {  // no finite value at all: as all zero
    std::vector<float> x(16 * 64);
    for (size_t i = 0; i < x.size(); ++i) x[i] = i % 3 == 0 ? NAN : (i % 3 == 1 ? INFINITY : -INFINITY);
    const Coded r = RoundTrip(v, d, x);
    for (float b : r.back) EXPECT_EQ(b, 0.0f);
  }
  {  // NaN element -> 0, +-Inf -> +-6 S, the rest of the group from its finite values
    std::vector<float> x(16 * 64, 1.0f);
    x[0] = NAN;
    x[1] = INFINITY;
    x[2] = -INFINITY;
    x[3] = -3.0f;
    const Coded r = RoundTrip(v, d, x);
    const float g = SegmentScaleOf(v, d, r);
    const float s = T4::FromCode(r.params[0], g).scale;
    EXPECT_EQ(g, 3.0f / 2688.0f);
    EXPECT_EQ(r.back[0], 0.0f);
    EXPECT_EQ(r.back[1], 6.0f * s);
    EXPECT_EQ(r.back[2], -6.0f * s);
    EXPECT_NEAR(r.back[3], -3.0f, 3.0f * 1e-6f);  // the segment max: scale byte 448, exact up to fp32
    EXPECT_NEAR(r.back[4], 1.0f, 0.25f);
  }
  {  // a constant segment decodes to the constant (scale byte 448, fp32 rounding only)
    for (float c : {0.3f, -1.7f, 1000.0f, 6.0e-5f, 1e-30f}) {
      std::vector<float> x(16 * 64, c);
      const Coded r = RoundTrip(v, d, x);
      for (float b : r.back) EXPECT_NEAR(b, c, std::fabs(c) * 1e-6f) << c;
    }
  }
}

TEST(Fp4Block, CodecValidationAndSpecs) {
  const SegmentDims d{16, 128};
  EXPECT_TRUE(ValidateCodec({Format::kFp4E2m1, Grouping::kPerChannel, 16}, d).ok());
  EXPECT_TRUE(ValidateCodec({Format::kFp4E2m1, Grouping::kPerToken, 16}, d).ok());
  EXPECT_FALSE(ValidateCodec({Format::kFp4E2m1, Grouping::kPerChannel, 0}, d).ok());
  EXPECT_FALSE(ValidateCodec({Format::kFp4E2m1, Grouping::kPerToken, 32}, d).ok());
  EXPECT_FALSE(ValidateCodec({Format::kFp4E2m1, Grouping::kPerSegment, 0}, d).ok());
  EXPECT_FALSE(ValidateCodec({Format::kInt8, Grouping::kPerChannel, 16}, d).ok());  // int formats: whole block
  auto k = ParseCodecSpec("fp4_e2m1", Operand::kKey);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(*k, (SegmentCodec{Format::kFp4E2m1, Grouping::kPerChannel, 16}));
  auto v = ParseCodecSpec("fp4_e2m1:per_token", Operand::kKey);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, (SegmentCodec{Format::kFp4E2m1, Grouping::kPerToken, 16}));
  EXPECT_TRUE(ParseCodecSpec("fp4_e2m1:per_channel:16", Operand::kValue).ok());
  EXPECT_FALSE(ParseCodecSpec("fp4_e2m1:per_token:32", Operand::kValue).ok());
  EXPECT_FALSE(ParseCodecSpec("fp4_e2m1:per_segment", Operand::kValue).ok());
  EXPECT_FALSE(ParseCodecSpec("int8:per_channel:16", Operand::kKey).ok());
  for (const char* spec : {"fp4_e2m1:per_channel:16", "fp4_e2m1:per_token:16"}) {
    auto c = ParseCodecSpec(spec, Operand::kKey);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(CodecSpecString(*c), spec);
  }
  // Usable by the policy in both tiers: fp4 resident, fp4 offload, K8V-fp4.
  PrecisionPolicy p = PrecisionPolicy::Uniform(Format::kFp4E2m1, Format::kFp4E2m1);
  p.offload_key = DefaultCodec(Format::kInt8, Operand::kKey);
  auto resolved = Resolve(p, LayoutShape{32, 8, 128, 16});
  ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
  // Llama-3-8B page: 512 KiB of fp4 codes; 32 x 2 x 8 segments of 128 scale bytes + 4 (-> 144 aligned).
  EXPECT_EQ(resolved->resident.page_bytes(), 512u * 1024);
  EXPECT_EQ(resolved->resident.param_bytes(), 32u * 2 * 8 * 144);
}

}  // namespace
}  // namespace kvtier
