// Pinned blocks are never dropped: regression tests for paths found by the reliability campaign
// (docs/reliability.md) that freed a block while a session held a pin on it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "kernels/testing/kv_oracle.h"
#include "tests/tiering/store_scenarios.h"
#include "tiering/block_store.h"

namespace kvtier {
namespace {

class BlockStorePinTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("kvtier-pin-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    BlockStoreOptions o;
    o.gpu_pool_bytes = 64ull << 20;
    o.host_tier_bytes = 64ull << 20;
    SsdTierOptions so;
    so.dir = dir_.string();
    so.slab_bytes = 1ull << 20;
    so.capacity_bytes = 2ull << 20;  // two slabs
    so.compression = SsdCompression::kOff;
    so.log = [](std::string_view line) { std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data()); };
    auto ssd = SsdTier::Open(so);
    ASSERT_TRUE(ssd.ok()) << ssd.status();
    store_ = std::make_unique<BlockStore>(o, MakeHostDeviceBackend(2), MakeAlignedHostAllocator(), std::move(*ssd));
    LayoutSpec spec;
    spec.shape = LayoutShape{2, 2, 64, 16};
    spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
    spec.policy_fingerprint = "fp16/int8";
    auto l = store_->RegisterLayout(spec);
    ASSERT_TRUE(l.ok()) << l.status();
    layout_ = *l;
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::filesystem::path dir_;
  std::unique_ptr<BlockStore> store_;
  const Layout* layout_ = nullptr;
};

// The SSD tier drops records that do not fit when it shrinks; it knows nothing of pins. A block pinned
// on the SSD tier (Lookup with pin and without page-in) used to be freed with its record, pin and all.
TEST_F(BlockStorePinTest, ShrinkingTheSsdTierKeepsPinnedSsdBlocks) {
  const SessionId writer = 1, reader = 2;
  std::vector<std::vector<int32_t>> prompts;
  for (int p = 0; p < 14; ++p) {  // ~1.7 MB of int8 records: both slabs in use
    prompts.push_back(testing::ScenarioPrompt(16 * 12, 100 + p));
    auto ids = testing::WritePromptBlocks(*store_, *layout_, writer, prompts.back());
    ASSERT_TRUE(ids.ok()) << ids.status();
    store_->ReleaseSession(writer);
  }
  store_->DemoteFromGpu(0);
  store_->DemoteFromHost(0);
  ASSERT_EQ(store_->Stats().tiers[1].blocks, 0u) << "everything should be on the SSD tier";
  // Pin the newest prompt where it is (on SSD: newest records sit in the second slab).
  const std::vector<int32_t>& pinned = prompts.back();
  auto hit = store_->Lookup(reader, "t", layout_->id, pinned, /*pin=*/true, /*promote=*/false);
  ASSERT_TRUE(hit.ok()) << hit.status();
  ASSERT_EQ(hit->blocks.size(), 12u);
  std::vector<BlockId> ids;
  for (const auto& b : hit->blocks) ids.push_back(b.block_id);

  ASSERT_TRUE(store_->SetLimits(0, 0, 1ull << 20).ok());  // one slab left

  auto again = store_->Lookup(reader, "t", layout_->id, pinned, /*pin=*/false, /*promote=*/false);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->blocks.size(), 12u) << "a pinned block was dropped by the shrink";
  EXPECT_EQ(store_->PinnedBy(reader), 12);
  // ...and it is still the right data.
  auto promoted = store_->Lookup(reader, "t", layout_->id, pinned, true, true);
  ASSERT_TRUE(promoted.ok()) << promoted.status();
  ASSERT_EQ(promoted->blocks.size(), 12u);
  std::vector<BlockId> now;
  for (const auto& b : promoted->blocks) now.push_back(b.block_id);
  auto pages = store_->Read(reader, now);
  ASSERT_TRUE(pages.ok()) << pages.status();
  for (size_t b = 0; b < now.size(); ++b) {
    const auto c = testing::CheckActivationPageSegments(
        layout_->activation_geometry, Format::kFp16, testing::BlockSeed(pinned, 16, static_cast<int>(b)),
        reinterpret_cast<const uint8_t*>((*pages)[b].data()), 1.0f / 127.0f + 2e-3f);
    EXPECT_TRUE(c.ok()) << "block " << b;
  }
  EXPECT_TRUE(store_->Release(reader, ids).ok());
  EXPECT_TRUE(store_->Release(reader, now).ok());
  EXPECT_EQ(store_->Stats().pinned_blocks, 0u);
}

// A block that moves GPU -> host -> GPU many times, losing its clean copy each time (so every page-out
// quantizes the dequantized page again), stays within one int8 step of the original: re-quantization
// of already-quantized fp16 values is idempotent.
TEST_F(BlockStorePinTest, RepeatedRequantizationDoesNotDrift) {
  const SessionId s = 3;
  const std::vector<int32_t> prompt = testing::ScenarioPrompt(16 * 2, 7);
  ASSERT_TRUE(testing::WritePromptBlocks(*store_, *layout_, s, prompt).ok());
  store_->ReleaseSession(s);
  float worst = 0;
  for (int cycle = 0; cycle < 60; ++cycle) {
    store_->DemoteFromGpu(0);                                            // quantize (or reuse the clean copy)
    auto hit = store_->Lookup(s, "t", layout_->id, prompt, true, true);  // page in: keeps a clean copy
    ASSERT_TRUE(hit.ok()) << hit.status();
    ASSERT_EQ(hit->blocks.size(), 2u);
    std::vector<BlockId> ids;
    for (const auto& b : hit->blocks) ids.push_back(b.block_id);
    auto pages = store_->Read(s, ids);
    ASSERT_TRUE(pages.ok()) << pages.status();
    for (size_t b = 0; b < ids.size(); ++b) {
      const auto c = testing::CheckActivationPageSegments(layout_->activation_geometry, Format::kFp16,
                                                          testing::BlockSeed(prompt, 16, static_cast<int>(b)),
                                                          reinterpret_cast<const uint8_t*>((*pages)[b].data()), 1.0f);
      worst = std::max(worst, c.max_rel_error);
    }
    store_->ReleaseSession(s);
    ASSERT_TRUE(store_->SetLimits(0, 4096, 0).ok());  // host pressure: the clean copies go
    ASSERT_TRUE(store_->SetLimits(0, 64ull << 20, 0).ok());
  }
  EXPECT_LE(worst, 1.0f / 127.0f + 2e-3f) << "re-quantization drifted";
}

}  // namespace
}  // namespace kvtier
