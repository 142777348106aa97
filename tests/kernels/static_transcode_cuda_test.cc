// CUDA static-scale transcode vs the CPU reference: same bytes and clip counts for page-out (fp16/bf16
// pool pages at scattered slots -> compact static pages) and page-in (back into the pool), int8 and fp8.
#include "kernels/cuda/static_transcode_cuda.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/device.h"
#include "kernels/static_transcode.h"

namespace kvtier {
namespace {

#define SKIP_WITHOUT_GPU()                                                       \
  do {                                                                           \
    if (!ProbeGpu().available) GTEST_SKIP() << "no GPU: " << ProbeGpu().why_not; \
  } while (0)

struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) : bytes(bytes) {
    if (cudaMalloc(&ptr, bytes ? bytes : 16) != cudaSuccess) ptr = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  uint8_t* get() const { return static_cast<uint8_t*>(ptr); }
  void* ptr = nullptr;
  size_t bytes;
};

constexpr LayoutShape kShape{4, 2, 128, 16};

class StaticTranscodeCuda : public ::testing::TestWithParam<std::tuple<Format, Format>> {};

TEST_P(StaticTranscodeCuda, MatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  const auto [act, f] = GetParam();
  const PageGeometry plain = *PageGeometry::Uniform(kShape, DefaultCodec(act, Operand::kKey), DefaultCodec(act, Operand::kValue));
  const PageGeometry st = *PageGeometry::Create(kShape, [&](int layer, Operand, int) {
    return layer == 0 ? DefaultCodec(act, Operand::kKey) : SegmentCodec{f, Grouping::kStaticChannel, 0};
  });
  std::vector<float> scales(static_cast<size_t>(st.num_segments()) * kShape.head_dim);
  for (size_t i = 0; i < scales.size(); ++i)
    scales[i] = HalfToFloat(FloatToHalfRoundUp((2.0f + (i % 5) * 0.25f) / StaticCodeLimit(f)));
  constexpr uint32_t kPages = 6, kSlots = 11;
  const uint32_t slots[kPages] = {3, 0, 9, 4, 10, 7};
  std::mt19937 rng(42);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<uint8_t> pool_host(plain.page_bytes() * kSlots, 0);
  for (size_t i = 0; i < pool_host.size() / 2; ++i) {
    float v = n(rng) * ((i % 128) == 9 ? 4.0f : 1.0f);
    if (i % 997 == 1) v = NAN;
    if (i % 1009 == 2) v = -INFINITY;
    const uint16_t h = act == Format::kBf16 ? FloatToBf16(v) : FloatToHalf(v);
    std::memcpy(&pool_host[2 * i], &h, 2);
  }
  // CPU reference, page by page.
  std::vector<uint8_t> want(st.page_bytes() * kPages), want_back(plain.page_bytes() * kPages);
  uint64_t want_clips = 0;
  for (uint32_t p = 0; p < kPages; ++p) {
    ASSERT_TRUE(TranscodePageStaticRef(plain, {pool_host.data() + slots[p] * plain.page_bytes(), nullptr}, st,
                                       {want.data() + p * st.page_bytes(), nullptr}, scales, &want_clips)
                    .ok());
    ASSERT_TRUE(TranscodePageStaticRef(st, {want.data() + p * st.page_bytes(), nullptr}, plain,
                                       {want_back.data() + p * plain.page_bytes(), nullptr}, scales)
                    .ok());
  }
  ASSERT_GT(want_clips, 0u);
  DeviceBuffer pool(pool_host.size()), staging(want.size()), slot_buf(sizeof slots), clips(8), pool2(pool_host.size());
  ASSERT_EQ(cudaMemcpy(pool.get(), pool_host.data(), pool_host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(slot_buf.get(), slots, sizeof slots, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(clips.get(), 0, 8), cudaSuccess);
  auto out_plan = CudaStaticTranscode::Create(plain, st, scales);
  auto in_plan = CudaStaticTranscode::Create(st, plain, scales);
  ASSERT_TRUE(out_plan.ok()) << out_plan.status().message();
  ASSERT_TRUE(in_plan.ok()) << in_plan.status().message();
  const auto* dev_slots = reinterpret_cast<const uint32_t*>(slot_buf.get());
  auto* dev_clips = reinterpret_cast<unsigned long long*>(clips.get());
  ASSERT_TRUE(out_plan->Launch({pool.get(), plain.page_bytes(), nullptr, 0, dev_slots},
                               {staging.get(), st.page_bytes(), nullptr, 0, nullptr}, kPages, dev_clips, nullptr)
                  .ok());
  ASSERT_TRUE(in_plan->Launch({staging.get(), st.page_bytes(), nullptr, 0, nullptr},
                              {pool2.get(), plain.page_bytes(), nullptr, 0, dev_slots}, kPages, nullptr, nullptr)
                  .ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint8_t> got(want.size()), got_pool(pool_host.size());
  unsigned long long got_clips = 0;
  ASSERT_EQ(cudaMemcpy(got.data(), staging.get(), got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(got_pool.data(), pool2.get(), got_pool.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(&got_clips, clips.get(), 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got, want);
  EXPECT_EQ(got_clips, want_clips);
  for (uint32_t p = 0; p < kPages; ++p)
    EXPECT_EQ(0, std::memcmp(got_pool.data() + slots[p] * plain.page_bytes(), want_back.data() + p * plain.page_bytes(),
                             plain.page_bytes()))
        << "page " << p;
}

INSTANTIATE_TEST_SUITE_P(Formats, StaticTranscodeCuda,
                         ::testing::Combine(::testing::Values(Format::kFp16, Format::kBf16),
                                            ::testing::Values(Format::kInt8, Format::kFp8E4m3, Format::kFp8E5m2)));

TEST(StaticTranscodeCudaChecks, RefusesDynamicCodecsAndBadScales) {
  SKIP_WITHOUT_GPU();
  const PageGeometry plain = *PageGeometry::Uniform(kShape, DefaultCodec(Format::kFp16, Operand::kKey),
                                                    DefaultCodec(Format::kFp16, Operand::kValue));
  const PageGeometry dyn = *PageGeometry::Uniform(kShape, DefaultCodec(Format::kInt8, Operand::kKey),
                                                  DefaultCodec(Format::kInt8, Operand::kValue));
  const PageGeometry st = *PageGeometry::Uniform(kShape, {Format::kInt8, Grouping::kStaticChannel, 0},
                                                 {Format::kInt8, Grouping::kStaticChannel, 0});
  std::vector<float> scales(static_cast<size_t>(st.num_segments()) * kShape.head_dim, 0.01f);
  EXPECT_FALSE(CudaStaticTranscode::Create(dyn, st, scales).ok());
  scales[3] = NAN;
  EXPECT_FALSE(CudaStaticTranscode::Create(plain, st, scales).ok());
}

}  // namespace
}  // namespace kvtier
