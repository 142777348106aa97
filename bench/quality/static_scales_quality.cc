// Calibrated static int8 scales against dynamic per-block int8 and fp8, on the same synthetic KV
// (issue 10; docs/calibration.md).
//
// The KV generator is kv_quality.cc's (Llama-style K: log-normal per-channel magnitudes, 5 outlier
// channels with offsets in low-frequency RoPE pairs, Student-t noise, RoPE; V: per-head mean direction +
// per-token-scaled Gaussian), except that the per-head "model" (channel magnitudes, offsets, V mean) is
// fixed per head and the token noise is drawn per workload, so that a calibration workload and an
// evaluation workload come from the same model. Static scales are calibrated (minmax, symmetric) on the
// calibration workload's fp16 KV, positions 0..C-1, then the evaluation workload (other noise, positions
// 0..N-1) is quantized block by block with the kernels' own transcodes (TranscodePageStaticRef for static
// scales, the reference codecs for dynamic ones) and dequantized.
//
// Metrics as kv_quality: relative Frobenius error of K and V; single-query decode attention output
// (relative L2, cosine) in double against fp32 K, V; plus the fraction of values clipped by the static
// scales (beyond the calibrated range).
//
//   static_scales_quality > bench/results/static_scales_quality.json
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/calibration.h"
#include "kernels/segment.h"
#include "kernels/static_transcode.h"

namespace kvtier {
namespace {

constexpr int kDim = 128;
constexpr int kBlock = 16;
constexpr int kKvHeads = 4;
constexpr int kGroup = 4;
constexpr float kQueryScale = 0.5f;

using Matrix = std::vector<float>;

void ApplyRope(float* x, int pos) {
  for (int i = 0; i < kDim / 2; ++i) {
    const double theta = pos * std::pow(10000.0, -2.0 * i / kDim);
    const double c = std::cos(theta), s = std::sin(theta);
    const double a = x[i], b = x[i + kDim / 2];
    x[i] = static_cast<float>(a * c - b * s);
    x[i + kDim / 2] = static_cast<float>(a * s + b * c);
  }
}

struct HeadModel {
  std::vector<float> scale, offset, v_mean;
};

HeadModel MakeModel(int head) {
  std::mt19937 rng(4242 + 31 * head);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::lognormal_distribution<float> chan_scale(0.0f, 0.5f);
  HeadModel m;
  m.scale.resize(kDim);
  m.offset.assign(kDim, 0.0f);
  for (int c = 0; c < kDim; ++c) m.scale[c] = chan_scale(rng);
  for (int c : {50, 58, 50 + kDim / 2, 58 + kDim / 2, 61}) {
    m.scale[c] *= 10.0f;
    m.offset[c] = 8.0f * (c % 2 ? -1.0f : 1.0f);
  }
  m.v_mean.resize(kDim);
  for (int c = 0; c < kDim; ++c) m.v_mean[c] = normal(rng);
  return m;
}

struct Head {
  Matrix k, v;
  std::vector<Matrix> q;
};

// K noise: Student-t with 4 degrees of freedom (kv_quality's generator), or Gaussian (light tails).
bool g_gaussian_k = false;

Head MakeWorkload(const HeadModel& m, int tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::student_t_distribution<float> heavy(4.0f);
  std::lognormal_distribution<float> tok_scale(0.0f, 0.3f);
  Head h;
  h.k.resize(static_cast<size_t>(tokens) * kDim);
  h.v.resize(h.k.size());
  for (int t = 0; t < tokens; ++t) {
    float* k = &h.k[static_cast<size_t>(t) * kDim];
    for (int c = 0; c < kDim; ++c) k[c] = m.offset[c] + m.scale[c] * (g_gaussian_k ? normal(rng) : heavy(rng));
    ApplyRope(k, t);
    const float ts = tok_scale(rng);
    for (int c = 0; c < kDim; ++c) h.v[static_cast<size_t>(t) * kDim + c] = m.v_mean[c] + ts * normal(rng);
  }
  for (int g = 0; g < kGroup; ++g) {
    Matrix q(kDim);
    for (int c = 0; c < kDim; ++c) q[c] = normal(rng) * kQueryScale;
    ApplyRope(q.data(), tokens);
    h.q.push_back(q);
  }
  return h;
}

// One head as pages of a 1-layer, 1-kv-head layout: segment 0 = K, segment 1 = V.
constexpr LayoutShape kShape{1, 1, kDim, kBlock};

PageGeometry Fp16Geometry() {
  return *PageGeometry::Uniform(kShape, {Format::kFp16, Grouping::kNone, 0}, {Format::kFp16, Grouping::kNone, 0});
}

std::vector<uint8_t> Fp16Page(const Matrix& k, const Matrix& v, int block) {
  const PageGeometry g = Fp16Geometry();
  std::vector<uint8_t> page(g.page_bytes());
  for (int s = 0; s < 2; ++s) {
    const Matrix& m = s == 0 ? k : v;
    auto* out = reinterpret_cast<uint16_t*>(page.data() + g.segment(s).data_offset);
    for (int i = 0; i < kBlock * kDim; ++i) out[i] = FloatToHalf(m[static_cast<size_t>(block) * kBlock * kDim + i]);
  }
  return page;
}

void ReadFp16Page(const std::vector<uint8_t>& page, int block, Matrix& k, Matrix& v) {
  const PageGeometry g = Fp16Geometry();
  for (int s = 0; s < 2; ++s) {
    Matrix& m = s == 0 ? k : v;
    const auto* in = reinterpret_cast<const uint16_t*>(page.data() + g.segment(s).data_offset);
    for (int i = 0; i < kBlock * kDim; ++i) m[static_cast<size_t>(block) * kBlock * kDim + i] = HalfToFloat(in[i]);
  }
}

// Static int8 scales (absmax / 127, as `kvtierctl calibrate export` writes them) of one head from the
// calibration workload's first `tokens` tokens, through the calibration statistics code.
std::vector<float> Calibrate(const Head& cal, int tokens) {
  const PageGeometry g = Fp16Geometry();
  CalibrationStats stats(kShape);
  for (int b = 0; b < tokens / kBlock; ++b) {
    const std::vector<uint8_t> page = Fp16Page(cal.k, cal.v, b);
    const uint8_t* p = page.data();
    (void)stats.AddPages(g, std::span<const uint8_t* const>(&p, 1));
  }
  return stats.SymmetricInt8Scales();
}

struct Config {
  std::string name;
  SegmentCodec k, v;
  bool is_static = false;  // k/v formats with Grouping::kStaticChannel
  int calibration_tokens = 0;
};

struct Scores {
  double k_err = 0, v_err = 0, out_rel_l2 = 0, out_cos = 0, clipped_fraction = 0;
};

double RelError(const Matrix& ref, const Matrix& got) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

std::vector<double> Attend(const Matrix& q, const Matrix& k, const Matrix& v) {
  const int tokens = static_cast<int>(k.size() / kDim);
  std::vector<double> s(tokens), out(kDim, 0.0);
  double mx = -1e300;
  for (int t = 0; t < tokens; ++t) {
    double dot = 0;
    for (int c = 0; c < kDim; ++c) dot += double(q[c]) * k[static_cast<size_t>(t) * kDim + c];
    s[t] = dot / std::sqrt(double(kDim));
    mx = std::max(mx, s[t]);
  }
  double sum = 0;
  for (int t = 0; t < tokens; ++t) sum += (s[t] = std::exp(s[t] - mx));
  for (int t = 0; t < tokens; ++t)
    for (int c = 0; c < kDim; ++c) out[c] += s[t] / sum * v[static_cast<size_t>(t) * kDim + c];
  return out;
}

Scores Evaluate(const Config& cfg, int tokens) {
  Scores s;
  int n_out = 0;
  uint64_t clipped = 0, values = 0;
  const PageGeometry fp16 = Fp16Geometry();
  const PageGeometry dst = *PageGeometry::Uniform(kShape, cfg.k, cfg.v);
  for (int h = 0; h < kKvHeads; ++h) {
    const HeadModel model = MakeModel(h);
    const Head eval = MakeWorkload(model, tokens, 1000 + 17 * h + tokens);
    std::vector<float> scales(2 * kDim, 1.0f);
    if (cfg.is_static) {
      const Head cal = MakeWorkload(model, cfg.calibration_tokens, 777 + 13 * h);
      scales = Calibrate(cal, cfg.calibration_tokens);
      const float limit = StaticCodeLimit(cfg.k.format);  // fp8: the same range over the fp8 code range
      for (float& x : scales) x = cfg.k.format == Format::kInt8 ? HalfToFloat(FloatToHalfRoundUp(x)) : x * 127.0f / limit;
    }
    Matrix kq(eval.k.size()), vq(eval.v.size());
    std::vector<uint8_t> mid(dst.page_bytes()), params(dst.param_bytes() + 16), back(fp16.page_bytes());
    for (int b = 0; b < tokens / kBlock; ++b) {
      const std::vector<uint8_t> page = Fp16Page(eval.k, eval.v, b);
      if (cfg.is_static) {
        (void)TranscodePageStaticRef(fp16, {page.data(), nullptr}, dst, {mid.data(), nullptr}, scales, &clipped);
        (void)TranscodePageStaticRef(dst, {mid.data(), nullptr}, fp16, {back.data(), nullptr}, scales);
      } else {
        (void)TranscodePageRef(fp16, {page.data(), nullptr}, dst, {mid.data(), params.data()});
        (void)TranscodePageRef(dst, {mid.data(), params.data()}, fp16, {back.data(), nullptr});
      }
      values += 2 * kBlock * kDim;
      ReadFp16Page(back, b, kq, vq);
    }
    s.k_err += RelError(eval.k, kq) / kKvHeads;
    s.v_err += RelError(eval.v, vq) / kKvHeads;
    for (const Matrix& q : eval.q) {
      const auto ref = Attend(q, eval.k, eval.v), got = Attend(q, kq, vq);
      double num = 0, den = 0, dot = 0, ng = 0;
      for (int c = 0; c < kDim; ++c) {
        num += (got[c] - ref[c]) * (got[c] - ref[c]);
        den += ref[c] * ref[c];
        dot += got[c] * ref[c];
        ng += got[c] * got[c];
      }
      s.out_rel_l2 += std::sqrt(num / den);
      s.out_cos += dot / std::sqrt(den * ng);
      ++n_out;
    }
  }
  s.out_rel_l2 /= n_out;
  s.out_cos /= n_out;
  s.clipped_fraction = values ? static_cast<double>(clipped) / values : 0.0;
  return s;
}

}  // namespace
}  // namespace kvtier

int main() {
  using namespace kvtier;
  const SegmentCodec e4m3{Format::kFp8E4m3, Grouping::kPerSegment, 0};
  const SegmentCodec i8c{Format::kInt8, Grouping::kPerChannel, 0}, i8t{Format::kInt8, Grouping::kPerToken, 0};
  const SegmentCodec s8{Format::kInt8, Grouping::kStaticChannel, 0}, sfp8{Format::kFp8E4m3, Grouping::kStaticChannel, 0};
  std::vector<Config> configs = {
      {"fp16", {Format::kFp16, Grouping::kNone, 0}, {Format::kFp16, Grouping::kNone, 0}},
      {"fp8_e4m3 (dynamic, per block)", e4m3, e4m3},
      {"int8 dynamic per block (K per-channel, V per-token)", i8c, i8t},
      {"int8 dynamic per block (K per-channel, V per-channel)", i8c, i8c},
  };
  for (int cal : {256, 1024, 4096}) {
    configs.push_back({"int8 static per-channel (calibrated on " + std::to_string(cal) + " tokens)", s8, s8, true, cal});
  }
  configs.push_back({"fp8_e4m3 static per-channel (calibrated on 4096 tokens)", sfp8, sfp8, true, 4096});
  std::printf("{\n  \"generator\": \"bench/quality/static_scales_quality.cc\",\n");
  std::printf("  \"shape\": {\"head_dim\": %d, \"block\": %d, \"kv_heads\": %d, \"query_heads_per_kv\": %d, "
              "\"query_scale\": %.2f},\n",
              kDim, kBlock, kKvHeads, kGroup, kQueryScale);
  std::printf("  \"results\": [\n");
  bool first = true;
  for (bool gaussian : {false, true}) {
    g_gaussian_k = gaussian;
    for (const Config& c : configs)
      for (int tokens : {1024, 4096}) {
        const Scores s = Evaluate(c, tokens);
        std::printf(
            "%s    {\"k_noise\": \"%s\", \"format\": \"%s\", \"tokens\": %d, \"calibration_tokens\": %d, "
            "\"k_rel_err\": %.6g, \"v_rel_err\": %.6g, \"attn_out_rel_l2\": %.6g, \"attn_out_cosine\": %.9f, "
            "\"clipped_fraction\": %.3g}",
            first ? "" : ",\n", gaussian ? "gaussian" : "student_t4", c.name.c_str(), tokens, c.calibration_tokens,
            s.k_err, s.v_err, s.out_rel_l2, s.out_cos, s.clipped_fraction);
        first = false;
      }
  }
  std::printf("\n  ]\n}\n");
  return 0;
}
