// Host-side validation of attention launches: every error a caller can cause is reported before any
// work runs, and the output is left untouched.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/attention/attention.h"
#include "tests/kernels/attention_test_util.h"

namespace kvtier {
namespace {

class AttentionValidate : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = testing::MakeRandomPool(geometry_, 8, 1);
    batch_ = testing::MakeBatch({20, 33}, 16, 8, 2);
    q_ = testing::RandomActs(2 * 8 * 64, ActDtype::kFp16, 3);
    out_.assign(q_.size(), 0xab);
  }
  DecodeParams Params() {
    return {&geometry_, pool_.view(), batch_.view(), 1, 8, 64, ActDtype::kFp16, q_.data(), out_.data(), 0.0f};
  }
  // Runs both CPU entry points; both must fail with `code` and leave out_ untouched.
  void ExpectRejected(const DecodeParams& p, KernelCode code) {
    const KernelStatus a = PagedDecodeCpu(p, 1), b = PagedDecodeRef(p);
    EXPECT_EQ(a.code(), code) << a.ToString();
    EXPECT_EQ(b.code(), code) << b.ToString();
    EXPECT_FALSE(a.message().empty());
    for (uint8_t x : out_) ASSERT_EQ(x, 0xab);
  }

  PageGeometry geometry_ = testing::UniformGeometry({2, 2, 64, 16}, Format::kInt8, Format::kInt8);
  testing::HostPool pool_;
  testing::Batch batch_;
  std::vector<uint8_t> q_, out_;
};

TEST_F(AttentionValidate, ValidParamsPass) { EXPECT_TRUE(ValidateAttention(Params()).ok()); }

TEST_F(AttentionValidate, SlotOutsideThePoolIsRejected) {
  batch_.table[1] = 8;  // sequence 0, block 1: one past the last slot
  ExpectRejected(Params(), KernelCode::kOutOfRange);
  batch_.table[1] = -1;
  ExpectRejected(Params(), KernelCode::kOutOfRange);
}

TEST_F(AttentionValidate, UnusedBlockTableColumnsAreNotRead) {
  batch_.table[2] = 1 << 30;  // sequence 0 has 2 blocks; column 2 is padding
  EXPECT_TRUE(ValidateAttention(Params()).ok());
}

TEST_F(AttentionValidate, ZeroLengthSequenceIsRejected) {
  batch_.lens[1] = 0;
  ExpectRejected(Params(), KernelCode::kInvalidArgument);
}

TEST_F(AttentionValidate, SequenceLongerThanItsTableRowIsRejected) {
  batch_.lens[0] = batch_.stride * 16 + 1;
  ExpectRejected(Params(), KernelCode::kInvalidArgument);
}

TEST_F(AttentionValidate, BadGqaRatioIsRejected) {
  auto p = Params();
  p.num_q_heads = 3;  // not a multiple of 2 KV heads
  ExpectRejected(p, KernelCode::kInvalidArgument);
  p.num_q_heads = 0;
  ExpectRejected(p, KernelCode::kInvalidArgument);
}

TEST_F(AttentionValidate, LayerOrHeadDimMismatchIsRejected) {
  auto p = Params();
  p.layer = 2;
  ExpectRejected(p, KernelCode::kInvalidArgument);
  p = Params();
  p.head_dim = 128;
  ExpectRejected(p, KernelCode::kInvalidArgument);
}

TEST_F(AttentionValidate, MissingParameterMirrorIsRejected) {
  auto p = Params();
  p.pool.params = nullptr;
  ExpectRejected(p, KernelCode::kInvalidArgument);
}

TEST_F(AttentionValidate, NullBuffersAndEmptyBatchAreRejected) {
  auto p = Params();
  p.q = nullptr;
  ExpectRejected(p, KernelCode::kInvalidArgument);
  p = Params();
  p.batch.num_seqs = 0;
  ExpectRejected(p, KernelCode::kInvalidArgument);
  p = Params();
  p.geometry = nullptr;
  ExpectRejected(p, KernelCode::kInvalidArgument);
}

TEST_F(AttentionValidate, ExtendRejectsBadQueryRanges) {
  std::vector<int32_t> indptr = {0, 5, 5};  // second sequence has no new token
  ExtendParams e{&geometry_, pool_.view(),    batch_.view(), indptr.data(), 0,   8,
                 64,         ActDtype::kFp16, q_.data(),     out_.data(),   0.0f};
  EXPECT_EQ(PagedExtendCpu(e, 1).code(), KernelCode::kInvalidArgument);
  indptr = {0, 21, 22};  // 21 new tokens in a 20-token sequence
  EXPECT_EQ(PagedExtendRef(e).code(), KernelCode::kInvalidArgument);
  e.q_indptr = nullptr;
  EXPECT_EQ(ValidateAttention(e).code(), KernelCode::kInvalidArgument);
  for (uint8_t x : out_) ASSERT_EQ(x, 0xab);
}

}  // namespace
}  // namespace kvtier
