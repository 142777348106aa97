// The C ABI: layouts, segment placement, quantization into a host page, and the CPU decode and extend
// entry points against the C++ API; errors come back as codes with a message.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/capi/kvtier_kernels_capi.h"
#include "tests/kernels/attention_test_util.h"

namespace kvtier {
namespace {

uintptr_t U(const void* p) { return reinterpret_cast<uintptr_t>(p); }

TEST(AttentionCapi, CpuDecodeAndExtendMatchTheCppApi) {
  kvtier_layout* layout = nullptr;
  ASSERT_EQ(kvtier_layout_create(2, 2, 64, 16, "int8", "int4", &layout), 0) << kvtier_last_error();
  ASSERT_NE(layout, nullptr);
  const PageGeometry g = testing::UniformGeometry({2, 2, 64, 16}, Format::kInt8, Format::kInt4);
  EXPECT_EQ(kvtier_layout_page_bytes(layout), g.page_bytes());
  EXPECT_EQ(kvtier_layout_param_bytes(layout), g.param_bytes());
  uint64_t off = 0;
  uint32_t bytes = 0, poff = 0, pbytes = 0;
  ASSERT_EQ(kvtier_layout_segment(layout, 1, 1, 1, &off, &bytes, &poff, &pbytes), 0);
  EXPECT_EQ(off, g.segment(1, Operand::kValue, 1).data_offset);
  EXPECT_EQ(pbytes, g.segment(1, Operand::kValue, 1).param_bytes);

  const std::vector<int32_t> lens = {3, 40};
  const auto pool = testing::MakeRandomPool(g, 5, 1);
  const auto batch = testing::MakeBatch(lens, 16, 5, 2);
  const auto q = testing::RandomActs(2 * 4 * 64, ActDtype::kFp32, 3);
  std::vector<uint8_t> want(q.size()), got(q.size());
  DecodeParams p{&g, pool.view(), batch.view(), 1, 4, 64, ActDtype::kFp32, q.data(), want.data(), 0.0f};
  ASSERT_TRUE(PagedDecodeCpu(p, 1).ok());
  ASSERT_EQ(kvtier_decode_cpu(layout, 1, U(pool.data.data()), U(pool.params.data()), 5, 2, U(batch.lens.data()),
                              U(batch.table.data()), batch.stride, 4, 2, U(q.data()), U(got.data()), 0.0f, 2),
            0)
      << kvtier_last_error();
  EXPECT_EQ(got, want);

  const std::vector<int32_t> indptr = {0, 1, 2};
  ExtendParams e{&g, pool.view(), batch.view(), indptr.data(), 1, 4, 64, ActDtype::kFp32, q.data(), want.data(), 0.0f};
  ASSERT_TRUE(PagedExtendCpu(e, 1).ok());
  ASSERT_EQ(kvtier_extend_cpu(layout, 1, U(pool.data.data()), U(pool.params.data()), 5, 2, U(batch.lens.data()),
                              U(batch.table.data()), batch.stride, U(indptr.data()), 4, 2, U(q.data()), U(got.data()),
                              0.0f, 1),
            0);
  EXPECT_EQ(got, want);

  // A bad GQA ratio is an error code with a message, nothing written.
  std::vector<uint8_t> untouched(q.size(), 0x5a);
  EXPECT_EQ(kvtier_decode_cpu(layout, 1, U(pool.data.data()), U(pool.params.data()), 5, 2, U(batch.lens.data()),
                              U(batch.table.data()), batch.stride, 3, 2, U(q.data()), U(untouched.data()), 0.0f, 1),
            3);
  EXPECT_NE(std::string(kvtier_last_error()).find("num_q_heads"), std::string::npos);
  for (uint8_t x : untouched) ASSERT_EQ(x, 0x5a);
  kvtier_layout_destroy(layout);
}

TEST(AttentionCapi, QuantizeSegmentWritesThePagesSegment) {
  kvtier_layout* layout = nullptr;
  ASSERT_EQ(kvtier_layout_create(1, 1, 64, 16, "fp8_e4m3", "fp8_e4m3", &layout), 0);
  std::vector<float> vals(16 * 64);
  for (size_t i = 0; i < vals.size(); ++i) vals[i] = 0.01f * static_cast<float>(i % 97) - 0.4f;
  std::vector<uint8_t> data(kvtier_layout_page_bytes(layout)), params(kvtier_layout_param_bytes(layout));
  ASSERT_EQ(kvtier_quantize_segment_host(layout, 0, 1, 0, U(vals.data()), U(data.data()), U(params.data())), 0);
  uint64_t off = 0;
  ASSERT_EQ(kvtier_layout_segment(layout, 0, 1, 0, &off, nullptr, nullptr, nullptr), 0);
  EXPECT_NE(data[off + 1], 0);
  EXPECT_EQ(kvtier_layout_create(1, 1, 64, 16, "fp7", "int8", &layout), 3);
  EXPECT_EQ(kvtier_layout_segment(nullptr, 0, 0, 0, &off, nullptr, nullptr, nullptr), 3);
  kvtier_layout_destroy(layout);
}

}  // namespace
}  // namespace kvtier
