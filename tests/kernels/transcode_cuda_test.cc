// The CUDA quantize-gather / dequantize-scatter kernels against the CPU reference: bit-exact data and
// parameter bytes for every format, grouping, shape and source dtype, on random pages with outlier
// channels and special values (NaN, Inf, fp16 subnormals, -0, constant and all-zero segments), at random
// pool slots, with untouched slots checked to stay untouched.
#include "kernels/cuda/transcode_cuda.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/device.h"
#include "kernels/precision_policy.h"
#include "kernels/transcode.h"

namespace kvtier {
namespace {

#define SKIP_WITHOUT_GPU()                                                       \
  do {                                                                           \
    if (!ProbeGpu().available) GTEST_SKIP() << "no GPU: " << ProbeGpu().why_not; \
  } while (0)

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  uint8_t* get() const { return static_cast<uint8_t*>(ptr_); }
  void Upload(const std::vector<uint8_t>& host) const {
    ASSERT_EQ(cudaMemcpy(ptr_, host.data(), host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<uint8_t> Download() const {
    std::vector<uint8_t> host(bytes_);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

// Random activations shaped like KV: per-channel magnitudes with a few outlier channels; page 0 also
// carries the special values.
std::vector<uint8_t> RandomPlainPage(const PageGeometry& g, Format dtype, uint32_t seed, bool specials) {
  std::vector<uint8_t> page(g.page_bytes(), 0);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const SegmentDims d = g.dims();
  auto put = [&](uint8_t* seg, int i, float x) {
    const uint16_t h = dtype == Format::kBf16 ? FloatToBf16(x) : FloatToHalf(x);
    std::memcpy(seg + 2 * i, &h, 2);
  };
  for (int s = 0; s < g.num_segments(); ++s) {
    uint8_t* seg = page.data() + g.segment(s).data_offset;
    const int kind = specials ? s % 7 : 6;
    for (int t = 0; t < d.tokens; ++t)
      for (int c = 0; c < d.channels; ++c) {
        const int i = t * d.channels + c;
        const float mag = (c % 37 == 5) ? 20.0f : 1.0f + 0.01f * c;
        float x = normal(rng) * mag;
        if (kind == 0) x = 0.0f;
        if (kind == 1) x = 0.3f;
        if (kind == 2) x = std::ldexp(normal(rng), -20);  // fp16 subnormals
        if (kind == 3 && i % 97 == 0) x = NAN;
        if (kind == 3 && i % 89 == 1) x = INFINITY;
        if (kind == 3 && i % 83 == 2) x = -INFINITY;
        if (kind == 4) x = i % 2 ? -0.0f : std::fabs(x);  // lo is -0 or +0 depending on the order
        if (kind == 5) x = -std::fabs(x) - 1.0f;
        put(seg, i, x);
      }
  }
  return page;
}

// Empty when equal; otherwise where the first difference is: byte offset, the segment it falls in (by
// data or parameter offset), and both bytes.
std::string FirstDifference(const uint8_t* got, const uint8_t* want, size_t n, const PageGeometry& g, bool params) {
  for (size_t i = 0; i < n; ++i) {
    if (got[i] == want[i]) continue;
    int seg = -1;
    for (int s = 0; s < g.num_segments(); ++s) {
      const auto& p = g.segment(s);
      const uint64_t begin = params ? p.param_offset : p.data_offset;
      const uint64_t size = params ? p.param_bytes : p.data_bytes;
      if (i >= begin && i < begin + size) seg = s;
    }
    char buf[200];
    std::snprintf(buf, sizeof buf, "byte %zu (segment %d: %s, +%llu) got 0x%02x want 0x%02x", i, seg,
                  seg >= 0 ? CodecSpecString(g.segment(seg).codec).c_str() : "padding",
                  seg >= 0 ? static_cast<unsigned long long>(
                                 i - (params ? g.segment(seg).param_offset : g.segment(seg).data_offset))
                           : 0ull,
                  got[i], want[i]);
    return buf;
  }
  return "";
}

struct Pages {
  std::vector<uint8_t> data, params;
};

Pages RefTranscode(const PageGeometry& src, const Pages& in, const PageGeometry& dst, int n) {
  Pages out{std::vector<uint8_t>(n * dst.page_bytes()), std::vector<uint8_t>(n * dst.param_bytes())};
  for (int i = 0; i < n; ++i) {
    const PageView v{in.data.data() + i * src.page_bytes(),
                     src.param_bytes() ? in.params.data() + i * src.param_bytes() : nullptr};
    const MutablePageView m{out.data.data() + i * dst.page_bytes(),
                            dst.param_bytes() ? out.params.data() + i * dst.param_bytes() : nullptr};
    EXPECT_TRUE(TranscodePageRef(src, v, dst, m).ok());
  }
  return out;
}

// Gathers n random plain pages (`dtype` everywhere in `plain`) from random pool slots into `packed`
// pages with the CUDA kernel and compares with the reference; then scatters the reference's packed pages
// back into other slots and compares again.
void CheckRoundTrip(const PageGeometry& plain, Format dtype, const PageGeometry& packed, int n, uint32_t seed) {
  SCOPED_TRACE(packed.DebugString());
  const int slots_in_pool = 2 * n + 3;
  std::mt19937 rng(seed);
  std::vector<uint32_t> slots(slots_in_pool);
  std::iota(slots.begin(), slots.end(), 0u);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<uint32_t> gather_slots(slots.begin(), slots.begin() + n);
  std::vector<uint32_t> scatter_slots(slots.begin() + n, slots.begin() + 2 * n);

  // Pool: poisoned, then the n source pages at their slots.
  const uint64_t stride = plain.page_bytes() + 64;  // slots need not be packed
  std::vector<uint8_t> pool(slots_in_pool * stride, 0xA5);
  Pages src;
  for (int i = 0; i < n; ++i) {
    const auto page = RandomPlainPage(plain, dtype, seed * 1000 + i, i == 0);
    std::copy(page.begin(), page.end(), pool.begin() + gather_slots[i] * stride);
    src.data.insert(src.data.end(), page.begin(), page.end());
  }
  const Pages want = RefTranscode(plain, src, packed, n);

  auto plan_out = CudaTranscodePlan::Create(plain, packed);
  auto plan_in = CudaTranscodePlan::Create(packed, plain);
  ASSERT_TRUE(plan_out.ok()) << plan_out.status().ToString();
  ASSERT_TRUE(plan_in.ok()) << plan_in.status().ToString();
  DeviceBuffer d_pool(pool.size()), d_slots(n * 4), d_scatter_slots(n * 4);
  DeviceBuffer d_stage(n * packed.page_bytes()), d_stage_params(std::max<size_t>(16, n * packed.param_bytes()));
  ASSERT_TRUE(d_pool.get() && d_slots.get() && d_stage.get() && d_stage_params.get());
  d_pool.Upload(pool);
  ASSERT_EQ(cudaMemcpy(d_slots.get(), gather_slots.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_scatter_slots.get(), scatter_slots.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(d_stage.get(), 0x5A, n * packed.page_bytes()), cudaSuccess);

  const DevicePageSet pool_set{d_pool.get(), stride, nullptr, 0, nullptr};
  ASSERT_TRUE(QuantizeGather(*plan_out, pool_set, reinterpret_cast<const uint32_t*>(d_slots.get()), n, d_stage.get(),
                             d_stage_params.get(), nullptr)
                  .ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  auto got_data = d_stage.Download();
  auto got_params = d_stage_params.Download();
  got_params.resize(want.params.size());
  for (int i = 0; i < n; ++i) {
    const uint64_t pb = packed.page_bytes(), qb = packed.param_bytes();
    EXPECT_EQ(FirstDifference(got_data.data() + i * pb, want.data.data() + i * pb, pb, packed, false), "")
        << "gather: data of page " << i;
    EXPECT_EQ(FirstDifference(got_params.data() + i * qb, want.params.data() + i * qb, qb, packed, true), "")
        << "gather: parameters of page " << i;
  }

  // Scatter the reference's packed pages back into the other slots.
  d_stage.Upload(want.data);
  if (!want.params.empty()) d_stage_params.Upload(want.params);
  ASSERT_TRUE(DequantizeScatter(*plan_in, d_stage.get(), d_stage_params.get(), n, pool_set,
                                reinterpret_cast<const uint32_t*>(d_scatter_slots.get()), nullptr)
                  .ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto back = RefTranscode(packed, want, plain, n);
  const auto got_pool = d_pool.Download();
  for (int i = 0; i < n; ++i) {
    const uint64_t pb = plain.page_bytes();
    EXPECT_EQ(FirstDifference(got_pool.data() + scatter_slots[i] * stride, back.data.data() + i * pb, pb, plain, false),
              "")
        << "scatter: page " << i << " (slot " << scatter_slots[i] << ")";
    EXPECT_TRUE(std::equal(pool.begin() + gather_slots[i] * stride, pool.begin() + (gather_slots[i] + 1) * stride,
                           got_pool.begin() + gather_slots[i] * stride))
        << "the gather source slot " << gather_slots[i] << " changed";
  }
  for (int s = 2 * n; s < slots_in_pool; ++s) {
    const uint32_t slot = slots[s];
    EXPECT_TRUE(std::all_of(got_pool.begin() + slot * stride, got_pool.begin() + (slot + 1) * stride,
                            [](uint8_t b) { return b == 0xA5; }))
        << "untouched slot " << slot << " was written";
  }
}

void CheckQuantizedToQuantized(const LayoutShape& shape, Format from, Format to, uint32_t seed);

PageGeometry Uniform(const LayoutShape& shape, SegmentCodec k, SegmentCodec v) {
  auto g = PageGeometry::Uniform(shape, k, v);
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  return *std::move(g);
}

PageGeometry Plain(const LayoutShape& shape, Format f) {
  return Uniform(shape, DefaultCodec(f, Operand::kKey), DefaultCodec(f, Operand::kValue));
}

constexpr LayoutShape kSmallLlama{4, 8, 128, 16};

TEST(TranscodeCuda, EveryFormatMatchesTheReferenceBitForBit) {
  SKIP_WITHOUT_GPU();
  const PageGeometry fp16 = Plain(kSmallLlama, Format::kFp16);
  for (int f = 0; f < kNumFormats; ++f) {
    const auto format = static_cast<Format>(f);
    SCOPED_TRACE(std::string(GetFormatInfo(format).name));
    CheckRoundTrip(fp16, Format::kFp16, Plain(kSmallLlama, format), 5, 10 + f);
  }
}

TEST(TranscodeCuda, EveryGroupingMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  const PageGeometry fp16 = Plain(kSmallLlama, Format::kFp16);
  for (Format f : {Format::kInt8, Format::kInt4})
    for (SegmentCodec c : {SegmentCodec{f, Grouping::kPerChannel, 0}, SegmentCodec{f, Grouping::kPerToken, 0},
                           SegmentCodec{f, Grouping::kPerToken, 16}, SegmentCodec{f, Grouping::kPerToken, 32},
                           SegmentCodec{f, Grouping::kPerToken, 64}}) {
      SCOPED_TRACE(CodecSpecString(c));
      CheckRoundTrip(fp16, Format::kFp16, Uniform(kSmallLlama, c, c), 3, 40);
    }
}

TEST(TranscodeCuda, Bf16SourcesAndK8V4) {
  SKIP_WITHOUT_GPU();
  const PageGeometry bf16 = Plain(kSmallLlama, Format::kBf16);
  auto k8v4 = Resolve(PrecisionPolicy::K8V4(Format::kBf16), kSmallLlama);
  ASSERT_TRUE(k8v4.ok());
  CheckRoundTrip(bf16, Format::kBf16, k8v4->offload, 6, 50);
  CheckRoundTrip(bf16, Format::kBf16, Plain(kSmallLlama, Format::kFp8E4m3), 3, 51);
}

TEST(TranscodeCuda, OtherShapesIncludingMultiChunkSegments) {
  SKIP_WITHOUT_GPU();
  for (LayoutShape shape : {LayoutShape{2, 2, 64, 16}, LayoutShape{2, 2, 256, 16}, LayoutShape{2, 2, 128, 32},
                            LayoutShape{2, 3, 128, 64}, LayoutShape{2, 2, 256, 64}}) {
    SCOPED_TRACE(std::to_string(shape.head_dim) + "D x " + std::to_string(shape.block_size) + "T");
    const PageGeometry fp16 = Plain(shape, Format::kFp16);
    auto k8v4 = Resolve(PrecisionPolicy::K8V4(), shape);
    ASSERT_TRUE(k8v4.ok());
    CheckRoundTrip(fp16, Format::kFp16, k8v4->offload, 3, 60);
    CheckRoundTrip(fp16, Format::kFp16, Plain(shape, Format::kFp8E5m2), 2, 61);
    CheckRoundTrip(fp16, Format::kFp16, Plain(shape, Format::kInt4), 2, 62);
    // fp4: K groups of 16 tokens (several per block at block 32/64), two-level scales.
    CheckRoundTrip(fp16, Format::kFp16, Plain(shape, Format::kFp4E2m1), 2, 63);
  }
}

// head_dim 96: 12 vectors per token row, 24 active lanes; per-token groups of 48 and 96 channels span
// 6 and 12 lanes (not a power of two).
TEST(TranscodeCuda, HeadDim96EveryFormatAndGrouping) {
  SKIP_WITHOUT_GPU();
  for (LayoutShape shape : {LayoutShape{2, 3, 96, 16}, LayoutShape{1, 2, 96, 32}, LayoutShape{1, 2, 96, 64}}) {
    SCOPED_TRACE("96D x " + std::to_string(shape.block_size) + "T");
    const PageGeometry fp16 = Plain(shape, Format::kFp16);
    for (int f = 0; f < kNumFormats; ++f) {
      SCOPED_TRACE(std::string(GetFormatInfo(static_cast<Format>(f)).name));
      CheckRoundTrip(fp16, Format::kFp16, Plain(shape, static_cast<Format>(f)), 2, 100 + f);
    }
    for (Format f : {Format::kInt8, Format::kInt4})
      for (uint16_t g : {uint16_t{0}, uint16_t{16}, uint16_t{32}, uint16_t{48}}) {
        const SegmentCodec c{f, Grouping::kPerToken, g};
        SCOPED_TRACE(CodecSpecString(c));
        CheckRoundTrip(fp16, Format::kFp16, Uniform(shape, DefaultCodec(f, Operand::kKey), c), 2, 110 + g);
      }
    CheckRoundTrip(Plain(shape, Format::kBf16), Format::kBf16, Plain(shape, Format::kFp4E2m1), 2, 120);
  }
  CheckQuantizedToQuantized(LayoutShape{1, 2, 96, 16}, Format::kFp4E2m1, Format::kInt8, 121);
}

TEST(TranscodeCuda, Fp4FromBf16AndK8VFp4) {
  SKIP_WITHOUT_GPU();
  const PageGeometry bf16 = Plain(kSmallLlama, Format::kBf16);
  CheckRoundTrip(bf16, Format::kBf16, Plain(kSmallLlama, Format::kFp4E2m1), 3, 90);
  const PageGeometry k8vfp4 =
      Uniform(kSmallLlama, DefaultCodec(Format::kInt8, Operand::kKey), DefaultCodec(Format::kFp4E2m1, Operand::kValue));
  CheckRoundTrip(Plain(kSmallLlama, Format::kFp16), Format::kFp16, k8vfp4, 3, 91);
  CheckRoundTrip(bf16, Format::kBf16, k8vfp4, 2, 92);
}

TEST(TranscodeCuda, MixedPolicyWithPassThroughLayersAndHeads) {
  SKIP_WITHOUT_GPU();
  PrecisionPolicy p = PrecisionPolicy::K8V4();
  p.rules.push_back({.tiers = RuleTiers::kOffload,
                     .layers = {"0", "-1"},
                     .key = DefaultCodec(Format::kFp16, Operand::kKey),
                     .value = DefaultCodec(Format::kFp16, Operand::kValue)});
  p.rules.push_back({.tiers = RuleTiers::kOffload, .heads = {2}, .key = DefaultCodec(Format::kFp8E4m3, Operand::kKey)});
  auto r = Resolve(p, kSmallLlama);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  CheckRoundTrip(r->resident, Format::kFp16, r->offload, 4, 70);
}

// Pages of `from` (made by the reference from random fp16 pages) re-encoded as `to` on the GPU.
void CheckQuantizedToQuantized(const LayoutShape& shape, Format from, Format to, uint32_t seed) {
  SCOPED_TRACE(std::string(GetFormatInfo(from).name) + " -> " + std::string(GetFormatInfo(to).name) + ", " +
               std::to_string(shape.head_dim) + "D x " + std::to_string(shape.block_size) + "T");
  const PageGeometry fp16 = Plain(shape, Format::kFp16);
  const PageGeometry a_geo = Plain(shape, from);
  const PageGeometry b_geo = Plain(shape, to);
  const int n = 3;
  Pages src;
  for (int i = 0; i < n; ++i) {
    const auto p = RandomPlainPage(fp16, Format::kFp16, seed + i, i == 0);
    src.data.insert(src.data.end(), p.begin(), p.end());
  }
  const Pages qa = RefTranscode(fp16, src, a_geo, n);
  const Pages want = RefTranscode(a_geo, qa, b_geo, n);
  auto plan = CudaTranscodePlan::Create(a_geo, b_geo);
  ASSERT_TRUE(plan.ok());
  DeviceBuffer a(qa.data.size()), ap(qa.params.size()), b(want.data.size()), bp(want.params.size());
  a.Upload(qa.data);
  ap.Upload(qa.params);
  const DevicePageSet in{a.get(), a_geo.page_bytes(), ap.get(), a_geo.param_bytes(), nullptr};
  const DevicePageSet out{b.get(), b_geo.page_bytes(), bp.get(), b_geo.param_bytes(), nullptr};
  ASSERT_TRUE(plan->Launch(in, out, n, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(FirstDifference(b.Download().data(), want.data.data(), want.data.size(), b_geo, false), "");
  EXPECT_EQ(FirstDifference(bp.Download().data(), want.params.data(), want.params.size(), b_geo, true), "");
}

TEST(TranscodeCuda, QuantizedToQuantizedUsesTheGenericKernel) {
  SKIP_WITHOUT_GPU();
  CheckQuantizedToQuantized(kSmallLlama, Format::kInt8, Format::kInt4, 80);
  CheckQuantizedToQuantized(kSmallLlama, Format::kInt8, Format::kFp4E2m1, 81);
  CheckQuantizedToQuantized(kSmallLlama, Format::kFp4E2m1, Format::kFp8E4m3, 82);
  // 64 x 256 segments: 64 KiB of decoded values in shared memory (above the 48 KiB default).
  CheckQuantizedToQuantized(LayoutShape{1, 2, 256, 64}, Format::kFp4E2m1, Format::kInt4, 83);
  CheckQuantizedToQuantized(LayoutShape{1, 2, 64, 32}, Format::kInt4, Format::kFp4E2m1, 84);
}

TEST(TranscodeCuda, RejectsUnsupportedShapesAndBadBuffers) {
  SKIP_WITHOUT_GPU();
  const LayoutShape d96{2, 2, 96, 16};
  auto mismatch = CudaTranscodePlan::Create(Plain(kSmallLlama, Format::kFp16), Plain(d96, Format::kInt8));
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("shape"), std::string::npos);

  const PageGeometry fp16 = Plain(kSmallLlama, Format::kFp16), int8 = Plain(kSmallLlama, Format::kInt8);
  auto plan = CudaTranscodePlan::Create(fp16, int8);
  ASSERT_TRUE(plan.ok());
  DeviceBuffer pool(2 * fp16.page_bytes() + 16), stage(int8.page_bytes()), params(int8.param_bytes());
  const DevicePageSet compact_in{pool.get(), fp16.page_bytes(), nullptr, 0, nullptr};
  const DevicePageSet no_params{stage.get(), int8.page_bytes(), nullptr, 0, nullptr};
  EXPECT_FALSE(plan->Launch(compact_in, no_params, 1, nullptr).ok());  // int8 needs a parameter record
  const DevicePageSet misaligned{pool.get() + 8, fp16.page_bytes(), nullptr, 0, nullptr};
  const DevicePageSet out{stage.get(), int8.page_bytes(), params.get(), int8.param_bytes(), nullptr};
  EXPECT_FALSE(plan->Launch(misaligned, out, 1, nullptr).ok());
  const DevicePageSet short_stride{pool.get(), fp16.page_bytes() / 2, nullptr, 0, nullptr};
  EXPECT_FALSE(plan->Launch(short_stride, out, 1, nullptr).ok());
  EXPECT_FALSE(QuantizeGather(*plan, compact_in, nullptr, 1, stage.get(), params.get(), nullptr).ok());
  EXPECT_TRUE(plan->Launch(compact_in, out, 0, nullptr).ok());  // empty batch: nothing to do
}

}  // namespace
}  // namespace kvtier
