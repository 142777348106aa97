// CUDA paged attention against the CPU reference: every format, head_dim, block size and GQA ratio,
// ragged batches (1, 15, 16, 17, ..., long; split-K engaged), mixed per-head formats, prefix-extend,
// and rejections before launch. Label `gpu`; skips visibly without a GPU.
#include "kernels/attention/attention_cuda.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/attention/attention.h"
#include "kernels/device.h"
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

// A device buffer (RAII) holding a copy of host bytes.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0 && cudaMalloc(&ptr_, bytes_) != cudaSuccess) ptr_ = nullptr;
  }
  template <class T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    if (ptr_ != nullptr) cudaMemcpy(ptr_, host.data(), bytes_, cudaMemcpyHostToDevice);
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  std::vector<uint8_t> ToHost() const {
    std::vector<uint8_t> h(bytes_);
    cudaMemcpy(h.data(), ptr_, bytes_, cudaMemcpyDeviceToHost);
    return h;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class AttentionCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ProbeGpu().available) GTEST_SKIP() << "no GPU: " << ProbeGpu().why_not;
  }
};

// Tolerance (relative L2) of CUDA vs the fp64 reference on the same pages. Both kernels run on tensor
// cores: q, the softmax weights P and dequantized K/V are rounded to fp16 (bf16 for bf16 pages, 8
// mantissa bits), accumulation is fp32, and the output is rounded to its dtype.
double Tolerance(Format f, ActDtype out) {
  const double t = out == ActDtype::kBf16 ? 8e-3 : out == ActDtype::kFp16 ? 1e-3 : 0.0;
  return std::max(t, f == Format::kBf16 ? 1.5e-2 : 2e-3);
}

struct Outcome {
  double err;
  std::string what;
};

Outcome DecodeVsRef(const PageGeometry& g, const std::vector<int32_t>& lens, int group, ActDtype dtype, uint32_t seed,
                    int layer = 0) {
  const int bs = g.shape().block_size, D = g.shape().head_dim;
  const int64_t slots = SlotsNeeded(lens, bs) + 5;
  const auto pool = MakeRandomPool(g, slots, seed);
  const auto batch = MakeBatch(lens, bs, slots, seed + 1);
  const int hq = g.shape().num_kv_heads * group;
  const auto q = RandomActs(int64_t(lens.size()) * hq * D, dtype, seed + 2);
  std::vector<uint8_t> ref(q.size());
  DecodeParams p{&g, pool.view(), batch.view(), layer, hq, D, dtype, q.data(), ref.data(), 0.0f};
  if (!PagedDecodeRef(p).ok()) return {INFINITY, "reference failed"};

  DeviceBuffer d_data(pool.data), d_params(pool.params), d_q(q), d_lens(batch.lens), d_table(batch.table);
  DeviceBuffer d_out(q.size());
  cudaMemset(d_out.get(), 0xff, q.size());  // poison: every element must be written
  DecodeParams dp = p;
  dp.pool = {d_data.get<uint8_t>(), d_params.get<uint8_t>(), slots};
  dp.q = d_q.get();
  dp.out = d_out.get();
  auto plan = PlanDecodeCuda(dp);
  if (!plan.ok()) return {INFINITY, plan.status().ToString()};
  DeviceBuffer ws(plan->workspace_bytes);
  CudaLaunch launch{{d_lens.get<int32_t>(), d_table.get<int32_t>(), nullptr}, ws.get(), plan->workspace_bytes, nullptr};
  const KernelStatus st = PagedDecodeCuda(dp, launch);
  if (!st.ok()) return {INFINITY, st.ToString()};
  if (cudaDeviceSynchronize() != cudaSuccess) return {INFINITY, "kernel failed"};
  return {RelativeError(ActsToFloat(d_out.ToHost(), dtype), ActsToFloat(ref, dtype)),
          "splits=" + std::to_string(plan->num_splits)};
}

TEST_F(AttentionCuda, DecodeMatchesReferenceForEveryFormat) {
  const std::vector<int32_t> lens = {1, 15, 16, 17, 63, 64, 65, 300, 1000};
  struct Pair {
    Format k, v;
  };
  for (Pair f :
       {Pair{Format::kFp16, Format::kFp16}, Pair{Format::kBf16, Format::kBf16},
        Pair{Format::kFp8E4m3, Format::kFp8E4m3}, Pair{Format::kFp8E5m2, Format::kFp8E5m2},
        Pair{Format::kInt8, Format::kInt8}, Pair{Format::kInt4, Format::kInt4}, Pair{Format::kInt8, Format::kInt4},
        Pair{Format::kFp4E2m1, Format::kFp4E2m1}})
    for (ActDtype dt : {ActDtype::kFp16, ActDtype::kBf16}) {
      const PageGeometry g = UniformGeometry({2, 2, 128, 16}, f.k, f.v);
      const Outcome r = DecodeVsRef(g, lens, 4, dt, 100 + static_cast<int>(f.k));
      EXPECT_LT(r.err, Tolerance(f.k, dt))
          << GetFormatInfo(f.k).name << "/" << GetFormatInfo(f.v).name << " dtype " << int(dt) << " " << r.what;
    }
}

TEST_F(AttentionCuda, DecodeMatchesReferenceOverShapes) {
  for (int d : {64, 96, 128, 256})
    for (int bs : {16, 32, 64})
      for (int group : {1, 4, 6, 8, 20}) {
        for (Format f : {Format::kFp16, Format::kInt4, Format::kFp4E2m1}) {
          const PageGeometry g = UniformGeometry({1, 2, d, bs}, f, f);
          const Outcome r = DecodeVsRef(g, {1, bs - 1, bs + 1, 5 * bs + 3}, group, ActDtype::kFp32, d * 7 + bs + group);
          EXPECT_LT(r.err, Tolerance(f, ActDtype::kFp32))
              << GetFormatInfo(f).name << " d=" << d << " bs=" << bs << " group=" << group << " " << r.what;
        }
      }
}

TEST_F(AttentionCuda, LongSequencesUseSplitKAndMatch) {
  const PageGeometry g = UniformGeometry({1, 8, 128, 16}, Format::kFp8E4m3, Format::kFp8E4m3);
  const Outcome r = DecodeVsRef(g, {32768}, 4, ActDtype::kFp32, 7);
  EXPECT_NE(r.what, "splits=1");
  EXPECT_LT(r.err, Tolerance(Format::kFp8E4m3, ActDtype::kFp32)) << r.what;
  const Outcome mix = DecodeVsRef(g, {20000, 1, 17, 4096}, 4, ActDtype::kFp32, 8);
  EXPECT_LT(mix.err, Tolerance(Format::kFp8E4m3, ActDtype::kFp32)) << mix.what;
}

TEST_F(AttentionCuda, Fp4LongSequencesAndLargeBlocksMatch) {
  for (int bs : {16, 64}) {
    const PageGeometry g = UniformGeometry({1, 8, 128, bs}, Format::kFp4E2m1, Format::kFp4E2m1);
    const Outcome r = DecodeVsRef(g, {20000, 1, 17, 4096, 33}, 4, ActDtype::kFp16, 11 + bs);
    EXPECT_LT(r.err, Tolerance(Format::kFp4E2m1, ActDtype::kFp16)) << "bs=" << bs << " " << r.what;
  }
}

TEST_F(AttentionCuda, Fp4WithOtherFormatsIsRejectedBeforeLaunch) {
  const PageGeometry g = UniformGeometry({1, 2, 64, 16}, Format::kFp4E2m1, Format::kInt4);
  const Outcome r = DecodeVsRef(g, {20}, 2, ActDtype::kFp16, 1);
  EXPECT_EQ(r.err, INFINITY);
  EXPECT_NE(r.what.find("fp4_e2m1"), std::string::npos) << r.what;
}

TEST_F(AttentionCuda, MixedFormatsPerHeadMatchReference) {
  auto g = PageGeometry::Create({2, 4, 128, 16}, [](int layer, Operand op, int head) {
    static constexpr Format kByHead[] = {Format::kFp8E4m3, Format::kInt8, Format::kInt8, Format::kInt4};
    return DefaultCodec(layer == 0 ? Format::kFp16 : kByHead[head], op);
  });
  ASSERT_TRUE(g.ok());
  for (int layer : {0, 1}) {
    const Outcome r = DecodeVsRef(*g, {5, 100, 777}, 2, ActDtype::kFp32, 50 + layer, layer);
    EXPECT_LT(r.err, Tolerance(Format::kInt8, ActDtype::kFp32)) << "layer " << layer << " " << r.what;
  }
}

Outcome ExtendVsRef(const PageGeometry& g, const std::vector<int32_t>& lens, const std::vector<int32_t>& indptr,
                    int group, ActDtype dtype, uint32_t seed) {
  const int bs = g.shape().block_size, D = g.shape().head_dim;
  const int64_t slots = SlotsNeeded(lens, bs) + 2;
  const auto pool = MakeRandomPool(g, slots, seed);
  const auto batch = MakeBatch(lens, bs, slots, seed + 1);
  const int hq = g.shape().num_kv_heads * group;
  const auto q = RandomActs(int64_t(indptr.back()) * hq * D, dtype, seed + 2);
  std::vector<uint8_t> ref(q.size());
  ExtendParams p{&g, pool.view(), batch.view(), indptr.data(), 0, hq, D, dtype, q.data(), ref.data(), 0.0f};
  if (!PagedExtendRef(p).ok()) return {INFINITY, "reference failed"};
  DeviceBuffer d_data(pool.data), d_params(pool.params), d_q(q), d_lens(batch.lens), d_table(batch.table),
      d_indptr(indptr), d_out(q.size());
  cudaMemset(d_out.get(), 0xff, q.size());
  ExtendParams dp = p;
  dp.pool = {d_data.get<uint8_t>(), d_params.get<uint8_t>(), slots};
  dp.q = d_q.get();
  dp.out = d_out.get();
  CudaLaunch launch{{d_lens.get<int32_t>(), d_table.get<int32_t>(), d_indptr.get<int32_t>()}, nullptr, 0, nullptr};
  const KernelStatus st = PagedExtendCuda(dp, launch);
  if (!st.ok()) return {INFINITY, st.ToString()};
  if (cudaDeviceSynchronize() != cudaSuccess) return {INFINITY, "kernel failed"};
  return {RelativeError(ActsToFloat(d_out.ToHost(), dtype), ActsToFloat(ref, dtype)), ""};
}

TEST_F(AttentionCuda, ExtendMatchesReferenceForEveryFormat) {
  const std::vector<int32_t> lens = {17, 200, 64, 1500};
  const std::vector<int32_t> indptr = {0, 17, 20, 84, 184};  // 17 (no prefix), 3, 64 (no prefix), 100
  for (Format f : {Format::kFp16, Format::kBf16, Format::kFp8E4m3, Format::kFp8E5m2, Format::kInt8, Format::kInt4,
                   Format::kFp4E2m1})
    for (int d : {64, 128, 256}) {
      const PageGeometry g = UniformGeometry({1, 2, d, 16}, f, f);
      const ActDtype dt = f == Format::kBf16 ? ActDtype::kBf16 : ActDtype::kFp16;
      const Outcome r = ExtendVsRef(g, lens, indptr, 4, dt, 300 + d + static_cast<int>(f));
      EXPECT_LT(r.err, Tolerance(f, dt)) << GetFormatInfo(f).name << " d=" << d << " " << r.what;
    }
}

// A prefix hit's extend: a few new rows over a long cached prefix. The (query tile, KV head, sequence) CTAs
// cannot fill the GPU, so the KV range is split across CTAs and merged; it must match the reference.
TEST_F(AttentionCuda, ExtendOfAFewRowsOverALongPrefixSplitsAndMatches) {
  const std::vector<int32_t> lens = {8195, 5000, 70};
  const std::vector<int32_t> indptr = {0, 3, 4, 20};  // 3 new rows, 1, 16
  for (Format f : {Format::kFp16, Format::kBf16, Format::kInt8, Format::kFp4E2m1}) {
    const PageGeometry g = UniformGeometry({1, 8, 128, 16}, f, f);
    const ActDtype dt = f == Format::kBf16 ? ActDtype::kBf16 : ActDtype::kFp16;
    const Outcome r = ExtendVsRef(g, lens, indptr, 4, dt, 900 + static_cast<int>(f));
    EXPECT_LT(r.err, Tolerance(f, dt)) << GetFormatInfo(f).name << " " << r.what;
  }
}

TEST_F(AttentionCuda, ExtendOverShapes) {
  for (int bs : {16, 32, 64})
    for (int group : {1, 3, 8}) {
      const PageGeometry g = UniformGeometry({1, 2, 96, bs}, Format::kInt8, Format::kInt4);
      const Outcome r = ExtendVsRef(g, {1, 90, 333}, {0, 1, 41, 74}, group, ActDtype::kFp32, bs + group);
      EXPECT_LT(r.err, 2e-3) << "bs=" << bs << " group=" << group << " " << r.what;
    }
}

TEST_F(AttentionCuda, UnsupportedCombinationIsRejectedBeforeLaunch) {
  const PageGeometry g = UniformGeometry({1, 2, 64, 16}, Format::kFp16, Format::kInt8);
  const Outcome r = DecodeVsRef(g, {20}, 2, ActDtype::kFp16, 1);
  EXPECT_EQ(r.err, INFINITY);
  EXPECT_NE(r.what.find("dispatch table"), std::string::npos) << r.what;
}

TEST_F(AttentionCuda, SlotOutsidePoolIsRejectedBeforeLaunch) {
  const PageGeometry g = UniformGeometry({1, 2, 64, 16}, Format::kFp16, Format::kFp16);
  auto pool = MakeRandomPool(g, 4, 1);
  auto batch = MakeBatch({20}, 16, 4, 2);
  batch.table[1] = 4;
  DeviceBuffer d_data(pool.data), d_lens(batch.lens), d_table(batch.table), d_q(size_t(8 * 64 * 2)),
      d_out(size_t(8 * 64 * 2));
  DecodeParams p{
      &g, {d_data.get<uint8_t>(), nullptr, 4}, batch.view(), 0, 4, 64, ActDtype::kFp16, d_q.get(), d_out.get(), 0.0f};
  CudaLaunch launch{{d_lens.get<int32_t>(), d_table.get<int32_t>(), nullptr}, nullptr, 0, nullptr};
  EXPECT_EQ(PagedDecodeCuda(p, launch).code(), KernelCode::kOutOfRange);
}

}  // namespace
}  // namespace kvtier
