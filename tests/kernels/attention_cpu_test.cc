// CPU paged attention: the fast path against the fp64 reference over every format, ragged batches, GQA
// ratios, head dims and block sizes; the reference against attention on the unquantized values; mixed
// per-head formats; decode == extend with one new token.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/attention/attention.h"
#include "tests/kernels/attention_test_util.h"

namespace kvtier {
namespace {

using testing::ActsToFloat;
using testing::MakeBatch;
using testing::MakeRandomPool;
using testing::RandomActs;
using testing::RelativeError;
using testing::SlotsNeeded;
using testing::UniformGeometry;

struct Case {
  Format k, v;
  int head_dim, block_size, num_kv_heads, group;
  ActDtype dtype;
};

// Runs decode with the reference and the fast path; returns the relative difference (fp32 vs fp64 math
// on identical dequantized values: far below any format's quantization error).
double DecodeFastVsRef(const Case& c, const std::vector<int32_t>& lens, int threads, uint32_t seed) {
  const PageGeometry g = UniformGeometry({2, c.num_kv_heads, c.head_dim, c.block_size}, c.k, c.v);
  const int64_t slots = SlotsNeeded(lens, c.block_size) + 3;
  const auto pool = MakeRandomPool(g, slots, seed);
  const auto batch = MakeBatch(lens, c.block_size, slots, seed + 1);
  const int hq = c.num_kv_heads * c.group;
  const int64_t n = static_cast<int64_t>(lens.size()) * hq * c.head_dim;
  const auto q = RandomActs(n, c.dtype, seed + 2);
  std::vector<uint8_t> ref(q.size()), fast(q.size(), 0xff);
  DecodeParams p{&g, pool.view(), batch.view(), 1, hq, c.head_dim, c.dtype, q.data(), ref.data(), 0.0f};
  EXPECT_TRUE(PagedDecodeRef(p).ok());
  p.out = fast.data();
  EXPECT_TRUE(PagedDecodeCpu(p, threads).ok());
  return RelativeError(ActsToFloat(fast, c.dtype), ActsToFloat(ref, c.dtype));
}

TEST(AttentionCpu, FastPathMatchesReferenceForEveryFormat) {
  const std::vector<int32_t> lens = {1, 15, 16, 17, 33, 100};
  for (Format f : {Format::kFp16, Format::kBf16, Format::kFp8E4m3, Format::kFp8E5m2, Format::kInt8, Format::kInt4,
                   Format::kFp4E2m1}) {
    const double err = DecodeFastVsRef({f, f, 64, 16, 2, 4, ActDtype::kFp32}, lens, 2, 11);
    EXPECT_LT(err, 1e-5) << GetFormatInfo(f).name;
  }
  const double mixed = DecodeFastVsRef({Format::kInt8, Format::kInt4, 64, 16, 2, 4, ActDtype::kFp32}, lens, 2, 12);
  EXPECT_LT(mixed, 1e-5) << "K int8 / V int4";
  // fp4 (two-level scales) with block 32: K groups of 16 tokens per channel, two per block.
  const double k8vfp4 = DecodeFastVsRef({Format::kInt8, Format::kFp4E2m1, 128, 32, 2, 4, ActDtype::kFp32}, lens, 2, 13);
  EXPECT_LT(k8vfp4, 1e-5) << "K int8 / V fp4";
  const double fp4_32 = DecodeFastVsRef({Format::kFp4E2m1, Format::kFp4E2m1, 96, 32, 2, 4, ActDtype::kFp32}, lens, 2, 14);
  EXPECT_LT(fp4_32, 1e-5) << "fp4, head_dim 96, block 32";
}

TEST(AttentionCpu, FastPathMatchesReferenceOverShapes) {
  for (int d : {64, 96, 128, 256})
    for (int bs : {16, 32, 64})
      for (int group : {1, 3, 8}) {
        const double err = DecodeFastVsRef({Format::kInt8, Format::kInt8, d, bs, 2, group, ActDtype::kFp16},
                                           {bs - 1, bs + 1, 3 * bs}, 1, d + bs + group);
        // fp16 output rounding (2^-11 relative) dominates.
        EXPECT_LT(err, 2e-3) << "d=" << d << " bs=" << bs << " group=" << group;
      }
}

// Attention over the reference-decoded pages agrees with attention over the original (unquantized)
// values within the format's quantization error. Values: K/V ~ N(0.1, spread_c^2) as in MakeRandomPool.
// The test rebuilds unquantized K/V from an fp32 pool, so it measures the whole decode path.
TEST(AttentionCpu, QuantizedPagesStayWithinTheFormatsErrorOfExactAttention) {
  const LayoutShape shape{1, 2, 128, 16};
  const std::vector<int32_t> lens = {40, 200, 17};
  const int hq = 8;
  struct Tol {
    Format f;
    double tol;
  };
  // Stated per format (relative L2 error of the attention output vs exact math on the fp16 values).
  for (const Tol& t : {Tol{Format::kBf16, 1e-2}, Tol{Format::kFp8E4m3, 6e-2}, Tol{Format::kFp8E5m2, 1.2e-1},
                       Tol{Format::kInt8, 2e-2}, Tol{Format::kInt4, 2e-1}, Tol{Format::kFp4E2m1, 2.5e-1}}) {
    const PageGeometry exact = UniformGeometry(shape, Format::kFp16, Format::kFp16);
    const PageGeometry quant = UniformGeometry(shape, t.f, t.f);
    const int64_t slots = SlotsNeeded(lens, 16);
    const auto src = MakeRandomPool(exact, slots, 5);
    // Quantize every fp16 segment of `src` into the quantized pool (same values, same slots).
    testing::HostPool qp;
    qp.num_slots = slots;
    qp.data.assign(slots * quant.page_bytes(), 0);
    qp.params.assign(slots * quant.param_bytes(), 0);
    std::vector<float> vals(16 * 128);
    for (int64_t s = 0; s < slots; ++s)
      for (int i = 0; i < exact.num_segments(); ++i) {
        const auto& a = exact.segment(i);
        const auto& b = quant.segment(i);
        DequantizeSegmentRef<Format::kFp16>(a.codec, exact.dims(), &src.data[s * exact.page_bytes() + a.data_offset],
                                            nullptr, vals.data());
        DispatchFormat(t.f, [&](auto tag) {
          QuantizeSegmentRef<decltype(tag)::kFormat>(b.codec, quant.dims(), vals.data(),
                                                     &qp.data[s * quant.page_bytes() + b.data_offset],
                                                     qp.params.data() + s * quant.param_bytes() + b.param_offset);
        });
      }
    const auto batch = MakeBatch(lens, 16, slots, 6);
    const auto q = RandomActs(int64_t(lens.size()) * hq * 128, ActDtype::kFp32, 7);
    std::vector<uint8_t> want(q.size()), got(q.size());
    DecodeParams p{&exact, src.view(), batch.view(), 0, hq, 128, ActDtype::kFp32, q.data(), want.data(), 0.0f};
    ASSERT_TRUE(PagedDecodeRef(p).ok());
    p.geometry = &quant;
    p.pool = qp.view();
    p.out = got.data();
    ASSERT_TRUE(PagedDecodeCpu(p, 2).ok());
    const double err = RelativeError(ActsToFloat(got, ActDtype::kFp32), ActsToFloat(want, ActDtype::kFp32));
    EXPECT_GT(err, 0.0) << GetFormatInfo(t.f).name;  // quantization changed something
    EXPECT_LT(err, t.tol) << GetFormatInfo(t.f).name;
  }
}

TEST(AttentionCpu, MixedFormatsPerHeadMatchReference) {
  const LayoutShape shape{2, 4, 64, 32};
  auto g = PageGeometry::Create(shape, [](int layer, Operand op, int head) {
    static constexpr Format kByHead[] = {Format::kFp16, Format::kInt8, Format::kInt8, Format::kFp8E4m3};
    return DefaultCodec(layer == 0 ? Format::kBf16 : kByHead[head], op);
  });
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(HeadRunsOf(*g, 1).size(), 3u);
  EXPECT_EQ(HeadRunsOf(*g, 0).size(), 1u);
  const std::vector<int32_t> lens = {5, 64, 77};
  const int64_t slots = SlotsNeeded(lens, 32) + 1;
  const auto pool = MakeRandomPool(*g, slots, 21);
  const auto batch = MakeBatch(lens, 32, slots, 22);
  const auto q = RandomActs(3 * 8 * 64, ActDtype::kBf16, 23);
  for (int layer : {0, 1}) {
    std::vector<uint8_t> ref(q.size()), fast(q.size());
    DecodeParams p{&*g, pool.view(), batch.view(), layer, 8, 64, ActDtype::kBf16, q.data(), ref.data(), 0.0f};
    ASSERT_TRUE(PagedDecodeRef(p).ok());
    p.out = fast.data();
    ASSERT_TRUE(PagedDecodeCpu(p, 2).ok());
    EXPECT_LT(RelativeError(ActsToFloat(fast, ActDtype::kBf16), ActsToFloat(ref, ActDtype::kBf16)), 8e-3);
  }
}

TEST(AttentionCpu, ExtendMatchesReferenceAndDecodeIsExtendOfOne) {
  const PageGeometry g = UniformGeometry({1, 2, 64, 16}, Format::kInt8, Format::kInt4);
  const std::vector<int32_t> lens = {9, 40, 70};
  const std::vector<int32_t> indptr = {0, 9, 12, 32};  // 9 (no prefix), 3 and 20 new tokens
  const int64_t slots = SlotsNeeded(lens, 16) + 2;
  const auto pool = MakeRandomPool(g, slots, 31);
  const auto batch = MakeBatch(lens, 16, slots, 32);
  const int hq = 4;
  const auto q = RandomActs(int64_t(indptr.back()) * hq * 64, ActDtype::kFp32, 33);
  std::vector<uint8_t> ref(q.size()), fast(q.size());
  ExtendParams p{&g, pool.view(), batch.view(), indptr.data(), 0, hq, 64, ActDtype::kFp32, q.data(), ref.data(), 0.0f};
  ASSERT_TRUE(PagedExtendRef(p).ok());
  p.out = fast.data();
  ASSERT_TRUE(PagedExtendCpu(p, 2).ok());
  const auto r = ActsToFloat(ref, ActDtype::kFp32), f = ActsToFloat(fast, ActDtype::kFp32);
  EXPECT_LT(RelativeError(f, r), 1e-5);

  // The last new token of every sequence sees the whole sequence: decode of those rows gives the same.
  std::vector<uint8_t> qd(3 * hq * 64 * 4), outd(qd.size());
  for (int s = 0; s < 3; ++s) std::memcpy(&qd[s * hq * 64 * 4], &q[(indptr[s + 1] - 1) * hq * 64 * 4], hq * 64 * 4);
  DecodeParams d{&g, pool.view(), batch.view(), 0, hq, 64, ActDtype::kFp32, qd.data(), outd.data(), 0.0f};
  ASSERT_TRUE(PagedDecodeCpu(d, 1).ok());
  const auto od = ActsToFloat(outd, ActDtype::kFp32);
  for (int s = 0; s < 3; ++s)
    for (int i = 0; i < hq * 64; ++i)
      EXPECT_NEAR(od[s * hq * 64 + i], r[(indptr[s + 1] - 1) * hq * 64 + i], 1e-5) << "seq " << s;

  // The first token of a sequence with no cached prefix attends to itself only: out == its V row.
  // (Sequence 0: all 9 tokens are new; row 0 sees token 0.) Checked through the reference decode of len 1.
  const std::vector<int32_t> one = {1};
  PagedKvBatch b1{1, one.data(), batch.table.data(), batch.stride};
  std::vector<uint8_t> out1(hq * 64 * 4);
  DecodeParams d1{&g, pool.view(), b1, 0, hq, 64, ActDtype::kFp32, q.data(), out1.data(), 0.0f};
  ASSERT_TRUE(PagedDecodeRef(d1).ok());
  const auto o1 = ActsToFloat(out1, ActDtype::kFp32);
  for (int i = 0; i < hq * 64; ++i) EXPECT_NEAR(o1[i], r[i], 1e-5);
}

TEST(AttentionCpu, LongSequenceAcrossManyThreads) {
  const double err =
      DecodeFastVsRef({Format::kFp8E4m3, Format::kFp8E4m3, 128, 64, 1, 4, ActDtype::kFp16}, {4000, 1, 63}, 3, 41);
  EXPECT_LT(err, 2e-3);
}

}  // namespace
}  // namespace kvtier
