// Quality of the block formats on synthetic KV shaped like real models' KV, and of decode attention over
// the dequantized KV, against fp32.
//
// Synthetic KV (head_dim 128, blocks of 16 tokens):
//   K: per-channel magnitudes (log-normal), a few large-magnitude outlier channels with a per-channel
//      offset, heavy-tailed (Student-t, 4 dof) noise, and RoPE applied per position, as in Llama-style K.
//   V: a per-head mean direction shared by all tokens plus Gaussian noise with a per-token magnitude; no
//      outlier channels.
//   q: Gaussian with RoPE at the decode position; 4 query heads per KV head (GQA).
// The KV is rounded to fp16 first (what an engine stores), then each 16-token block segment is quantized
// and dequantized with the reference codecs (kernels/segment.h), the same code paths as the kernels.
//
// Metrics per (format, sequence length), averaged over KV heads and query heads: relative Frobenius
// error of K and V; decode-attention output error (relative L2 and cosine similarity) of softmax(qK^T /
// sqrt(d)) V computed in double from the dequantized K, V against the same from fp32 K, V.
// Optional: a normalised Hadamard rotation of K, V and q before int4 (scores are invariant; the output is
// rotated back), which spreads K's outlier channels over all channels.
//
//   kv_quality > bench/results/kv_quality.json
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/segment.h"

namespace kvtier {
namespace {

constexpr int kDim = 128;
constexpr int kBlock = 16;
constexpr int kKvHeads = 4;
constexpr int kGroup = 4;  // query heads per KV head
// Query magnitudes: set how peaked attention is (reported as the mean largest attention weight).
constexpr float kQueryScales[] = {0.25f, 0.5f, 1.0f};

using Matrix = std::vector<float>;  // [tokens][kDim]

void ApplyRope(float* x, int pos) {
  for (int i = 0; i < kDim / 2; ++i) {
    const double theta = pos * std::pow(10000.0, -2.0 * i / kDim);
    const double c = std::cos(theta), s = std::sin(theta);
    const double a = x[i], b = x[i + kDim / 2];  // rotate-half pairing (Llama)
    x[i] = static_cast<float>(a * c - b * s);
    x[i + kDim / 2] = static_cast<float>(a * s + b * c);
  }
}

struct Head {
  Matrix k, v;
  std::vector<Matrix> q;  // kGroup queries [1][kDim]
};

Head MakeHead(int tokens, uint32_t seed, float query_scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::student_t_distribution<float> heavy(4.0f);
  std::lognormal_distribution<float> chan_scale(0.0f, 0.5f), tok_scale(0.0f, 0.3f);
  std::vector<float> scale(kDim), offset(kDim, 0.0f);
  for (int c = 0; c < kDim; ++c) scale[c] = chan_scale(rng);
  // Outlier channels sit in low-frequency RoPE pairs (i and i + 64 rotate together, slowly), as observed
  // in Llama-family K: large, mostly constant per channel, so they shift scores more than they rank them.
  for (int c : {50, 58, 50 + kDim / 2, 58 + kDim / 2, 61}) {
    scale[c] *= 10.0f;
    offset[c] = 8.0f * (c % 2 ? -1.0f : 1.0f);
  }
  std::vector<float> v_mean(kDim);  // V shares a per-head direction across tokens, as real V does
  for (int c = 0; c < kDim; ++c) v_mean[c] = normal(rng);
  Head h;
  h.k.resize(static_cast<size_t>(tokens) * kDim);
  h.v.resize(h.k.size());
  for (int t = 0; t < tokens; ++t) {
    float* k = &h.k[static_cast<size_t>(t) * kDim];
    for (int c = 0; c < kDim; ++c) k[c] = offset[c] + scale[c] * heavy(rng);
    ApplyRope(k, t);
    const float ts = tok_scale(rng);
    for (int c = 0; c < kDim; ++c) h.v[static_cast<size_t>(t) * kDim + c] = v_mean[c] + ts * normal(rng);
  }
  for (int g = 0; g < kGroup; ++g) {
    Matrix q(kDim);
    for (int c = 0; c < kDim; ++c) q[c] = normal(rng) * query_scale;
    ApplyRope(q.data(), tokens);
    h.q.push_back(q);
  }
  return h;
}

// Normalised Sylvester Hadamard matrix of order kDim applied to every row (in place).
void Hadamard(Matrix& m) {
  const int rows = static_cast<int>(m.size() / kDim);
  for (int r = 0; r < rows; ++r) {
    float* x = &m[static_cast<size_t>(r) * kDim];
    for (int len = 1; len < kDim; len <<= 1)
      for (int i = 0; i < kDim; i += 2 * len)
        for (int j = i; j < i + len; ++j) {
          const float a = x[j], b = x[j + len];
          x[j] = a + b;
          x[j + len] = a - b;
        }
    for (int c = 0; c < kDim; ++c) x[c] *= 1.0f / std::sqrt(static_cast<float>(kDim));
  }
}

// fp16 rounding, then block-by-block quantize + dequantize with `codec`.
Matrix RoundTrip(const Matrix& in, const SegmentCodec& codec) {
  const int tokens = static_cast<int>(in.size() / kDim);
  Matrix out(in.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = HalfToFloat(FloatToHalf(in[i]));
  const SegmentDims d{kBlock, kDim};
  std::vector<uint8_t> data(SegmentDataBytes(codec.format, d)), params(SegmentParamBytes(codec, d) + 16);
  for (int b = 0; b < tokens / kBlock; ++b) {
    float* seg = &out[static_cast<size_t>(b) * kBlock * kDim];
    DispatchFormat(codec.format, [&](auto tag) {
      constexpr Format F = decltype(tag)::kFormat;
      QuantizeSegmentRef<F>(codec, d, seg, data.data(), params.data());
      DequantizeSegmentRef<F>(codec, d, data.data(), params.data(), seg);
    });
  }
  return out;
}

double RelError(const Matrix& ref, const Matrix& got) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

std::vector<double> Attend(const Matrix& q, const Matrix& k, const Matrix& v, double* max_weight = nullptr) {
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
  if (max_weight) *max_weight = 1.0 / sum;  // the largest score's weight
  for (int t = 0; t < tokens; ++t)
    for (int c = 0; c < kDim; ++c) out[c] += s[t] / sum * v[static_cast<size_t>(t) * kDim + c];
  return out;
}

struct Config {
  const char* name;
  SegmentCodec k, v;
  bool hadamard;
};

struct Scores {
  double k_err = 0, v_err = 0, out_rel_l2 = 0, out_cos = 0, max_weight = 0;
};

Scores Evaluate(const Config& cfg, int tokens, float query_scale) {
  Scores s;
  int n_out = 0;
  for (int h = 0; h < kKvHeads; ++h) {
    Head head = MakeHead(tokens, 1000 + 17 * h + tokens, query_scale);
    Matrix kq, vq;
    if (cfg.hadamard) {
      Matrix kr = head.k, vr = head.v;
      Hadamard(kr);
      Hadamard(vr);
      kq = RoundTrip(kr, cfg.k);
      vq = RoundTrip(vr, cfg.v);
      Hadamard(kq);  // H is symmetric and orthogonal: H(Hx) = x
      Hadamard(vq);
    } else {
      kq = RoundTrip(head.k, cfg.k);
      vq = RoundTrip(head.v, cfg.v);
    }
    s.k_err += RelError(head.k, kq) / kKvHeads;
    s.v_err += RelError(head.v, vq) / kKvHeads;
    for (const Matrix& q : head.q) {
      double peak = 0;
      const auto ref = Attend(q, head.k, head.v, &peak), got = Attend(q, kq, vq);
      s.max_weight += peak;
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
  s.max_weight /= n_out;
  return s;
}

}  // namespace
}  // namespace kvtier

int main() {
  using namespace kvtier;
  const SegmentCodec fp16{Format::kFp16, Grouping::kNone, 0}, bf16{Format::kBf16, Grouping::kNone, 0};
  const SegmentCodec e4m3{Format::kFp8E4m3, Grouping::kPerSegment, 0}, e5m2{Format::kFp8E5m2, Grouping::kPerSegment, 0};
  const SegmentCodec i8c{Format::kInt8, Grouping::kPerChannel, 0}, i8t{Format::kInt8, Grouping::kPerToken, 0};
  const SegmentCodec i4c{Format::kInt4, Grouping::kPerChannel, 0}, i4t{Format::kInt4, Grouping::kPerToken, 32};
  // fp4_e2m1: E4M3 scale per 16 values (K: 16 tokens of a channel, V: 16 channels of a token) + fp32 per segment.
  const SegmentCodec f4c{Format::kFp4E2m1, Grouping::kPerChannel, 16}, f4t{Format::kFp4E2m1, Grouping::kPerToken, 16};
  const Config configs[] = {
      {"fp16", fp16, fp16, false},
      {"bf16", bf16, bf16, false},
      {"fp8_e4m3", e4m3, e4m3, false},
      {"fp8_e5m2", e5m2, e5m2, false},
      {"int8 (K per-channel, V per-token)", i8c, i8t, false},
      {"int8 (K per-token, V per-token)", i8t, i8t, false},
      {"int4 (K per-channel, V per-token g32)", i4c, i4t, false},
      {"int4 (K per-token g32, V per-token g32)", i4t, i4t, false},
      {"K8V4 (K int8 per-channel, V int4 per-token g32)", i8c, i4t, false},
      {"K4V8 (K int4 per-channel, V int8 per-token)", i4c, i8t, false},
      {"K4V8 (K int4 per-token g32, V int8 per-token)", i4t, i8t, false},
      {"int4 + Hadamard (K per-token g32, V per-token g32)", i4t, i4t, true},
      {"int4 + Hadamard (K per-channel, V per-token g32)", i4c, i4t, true},
      {"fp4_e2m1 (K per-channel g16, V per-token g16)", f4c, f4t, false},
      {"fp4_e2m1 (K per-token g16, V per-token g16)", f4t, f4t, false},
      {"K8V-fp4 (K int8 per-channel, V fp4_e2m1 per-token g16)", i8c, f4t, false},
      {"Kfp4-V8 (K fp4_e2m1 per-channel g16, V int8 per-token)", f4c, i8t, false},
      {"fp4_e2m1 + Hadamard (K per-token g16, V per-token g16)", f4t, f4t, true},
  };
  std::printf("{\n  \"generator\": \"bench/quality/kv_quality.cc\",\n");
  std::printf("  \"shape\": {\"head_dim\": %d, \"block\": %d, \"kv_heads\": %d, \"query_heads_per_kv\": %d},\n", kDim,
              kBlock, kKvHeads, kGroup);
  std::printf("  \"results\": [\n");
  const int lengths[] = {256, 1024, 4096};
  bool first = true;
  for (float qs : kQueryScales)
    for (const Config& c : configs)
      for (int tokens : lengths) {
        const Scores s = Evaluate(c, tokens, qs);
        std::printf(
            "%s    {\"format\": \"%s\", \"query_scale\": %.2f, \"tokens\": %d, \"k_rel_err\": %.6g, \"v_rel_err\": %.6g, "
            "\"attn_out_rel_l2\": %.6g, \"attn_out_cosine\": %.9f, \"mean_max_attention_weight\": %.4f}",
            first ? "" : ",\n", c.name, qs, tokens, s.k_err, s.v_err, s.out_rel_l2, s.out_cos, s.max_weight);
        first = false;
      }
  std::printf("\n  ]\n}\n");
  return 0;
}
