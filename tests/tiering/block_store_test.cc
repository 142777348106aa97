#include "tiering/block_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include <filesystem>

#include "kernels/testing/kv_oracle.h"
#include "tests/tiering/store_scenarios.h"

namespace kvtier {
namespace {

constexpr LayoutShape kShape{4, 2, 64, 16};

LayoutSpec Int8OffloadSpec() { return testing::Fp16Int8Spec(kShape); }

class BlockStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("kvtier-bs-");
    Reset(64ull << 20, 64ull << 20);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // ssd_bytes > 0 adds an SSD tier in dir_ (kept across Resets: a restart).
  void Reset(uint64_t gpu, uint64_t host, uint64_t ssd_bytes = 0) {
    store_.reset();
    BlockStoreOptions o;
    o.gpu_pool_bytes = gpu;
    o.host_tier_bytes = host;
    std::unique_ptr<SsdTier> ssd;
    if (ssd_bytes) {
      SsdTierOptions so;
      so.dir = (dir_ / "ssd").string();
      so.capacity_bytes = ssd_bytes;
      so.slab_bytes = 16ull << 20;
      auto opened = SsdTier::Open(so);
      ASSERT_TRUE(opened.ok()) << opened.status();
      ssd = std::move(*opened);
    }
    store_ = std::make_unique<BlockStore>(o, MakeHostDeviceBackend(2), MakeAlignedHostAllocator(), std::move(ssd));
    auto l = store_->RegisterLayout(Int8OffloadSpec());
    ASSERT_TRUE(l.ok()) << l.status();
    layout_ = *l;
  }

  std::vector<int32_t> Prompt(int n, int salt) { return testing::ScenarioPrompt(n, salt); }

  // Writes and commits every full block of `prompt` for `session`; returns the committed ids.
  std::vector<BlockId> WriteAndCommit(SessionId session, const std::vector<int32_t>& prompt,
                                      std::string_view salt = "t") {
    auto ids = testing::WritePromptBlocks(*store_, *layout_, session, prompt, salt);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<BlockId>{};
  }

  // Reads back the blocks and checks them against the oracle; returns the worst relative error.
  float VerifyBlocks(SessionId session, const std::vector<int32_t>& prompt, const std::vector<BlockId>& ids,
                     float tolerance) {
    auto pages = store_->Read(session, ids);
    EXPECT_TRUE(pages.ok()) << pages.status();
    if (!pages.ok()) return INFINITY;
    float worst = 0;
    for (size_t b = 0; b < ids.size(); ++b) {
      const auto r = testing::CheckActivationPage(layout_->activation_geometry, Format::kFp16,
                                                  testing::BlockSeed(prompt, kShape.block_size, b),
                                                  reinterpret_cast<const uint8_t*>((*pages)[b].data()), tolerance);
      EXPECT_EQ(r.bad_values, 0) << "block " << b;
      worst = std::max(worst, r.max_rel_error);
    }
    return worst;
  }

  std::vector<BlockId> Ids(const LookupOutcome& hit) {
    std::vector<BlockId> ids;
    for (const auto& b : hit.blocks) ids.push_back(b.block_id);
    return ids;
  }

  std::filesystem::path dir_;
  std::unique_ptr<BlockStore> store_;
  const Layout* layout_ = nullptr;
};

TEST_F(BlockStoreTest, SecondSessionFindsTheFullBlocksOfAPrompt) {
  const auto prompt = Prompt(1000, 1);  // 62 full blocks + a 8-token tail
  WriteAndCommit(1, prompt);
  auto hit = store_->Lookup(2, "t", layout_->id, prompt, /*pin=*/true, /*promote=*/false);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks.size(), 62u);
  EXPECT_EQ(hit->matched_tokens, 992);
  std::vector<BlockId> ids;
  for (const auto& b : hit->blocks) ids.push_back(b.block_id);
  EXPECT_LE(VerifyBlocks(2, prompt, ids, 1e-3f), 1e-3f);  // fp16 resident: exact up to fp16 rounding
}

TEST_F(BlockStoreTest, DemotedBlocksComeBackWithinTheInt8Bound) {
  const auto prompt = Prompt(320, 2);
  const auto ids = WriteAndCommit(1, prompt);
  ASSERT_TRUE(store_->Release(1, ids).ok());
  const EvictOutcome ev = store_->DemoteFromGpu(0);
  EXPECT_EQ(ev.moved, 20);
  auto stats = store_->Stats();
  EXPECT_EQ(stats.tiers[0].blocks, 0u);
  EXPECT_EQ(stats.tiers[1].blocks, 20u);
  EXPECT_GT(stats.bytes_saved_by_quantization, 0u);
  auto hit = store_->Lookup(2, "t", layout_->id, prompt, true, /*promote=*/true);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks.size(), 20u);
  std::vector<BlockId> back;
  for (const auto& b : hit->blocks) {
    EXPECT_EQ(b.tier, Tier::kGpu);
    back.push_back(b.block_id);
  }
  const float worst = VerifyBlocks(2, prompt, back, 1.0f / 127.0f);
  EXPECT_GT(worst, 0.0f);  // it really went through int8
  EXPECT_EQ(store_->Stats().page_ins, 20u);
}

// A block is quantized once: moving it down and up again reuses its offload record, so ten round trips
// leave it within one round trip's error (re-quantizing dequantized values would drift).
TEST_F(BlockStoreTest, RepeatedRoundTripsQuantizeOnce) {
  const auto prompt = Prompt(64, 11);
  const auto ids = WriteAndCommit(1, prompt);
  ASSERT_TRUE(store_->Release(1, ids).ok());
  for (int round = 0; round < 10; ++round) {
    ASSERT_EQ(store_->DemoteFromGpu(0).moved, 4);
    auto hit = store_->Lookup(2, "t", layout_->id, prompt, true, true);
    ASSERT_TRUE(hit.ok());
    ASSERT_EQ(hit->blocks.size(), 4u);
    ASSERT_TRUE(store_->Release(2, Ids(*hit)).ok());
  }
  EXPECT_EQ(store_->Stats().clean_copy_reuses, 36u);
  auto hit = store_->Lookup(3, "t", layout_->id, prompt, true, true);
  ASSERT_TRUE(hit.ok());
  VerifyBlocks(3, prompt, Ids(*hit), 0.5f / 127.0f + 2e-3f);  // one int8 round trip's bound
}

TEST_F(BlockStoreTest, TenantsDoNotSeeEachOthersPrefixes) {
  const auto prompt = Prompt(64, 3);
  WriteAndCommit(1, prompt, "tenant-a");
  auto other = store_->Lookup(2, "tenant-b", layout_->id, prompt, true, false);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->blocks.empty());
  auto same = store_->Lookup(3, "tenant-a", layout_->id, prompt, false, false);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->blocks.size(), 4u);
}

TEST_F(BlockStoreTest, CommittingAPublishedPrefixDeduplicates) {
  const auto prompt = Prompt(64, 4);
  const auto first = WriteAndCommit(1, prompt);
  const auto second = WriteAndCommit(2, prompt);
  EXPECT_EQ(first, second);
  EXPECT_EQ(store_->Stats().blocks_deduplicated, 4u);
  EXPECT_EQ(store_->Stats().tiers[0].blocks, 4u);  // the duplicates were freed
}

TEST_F(BlockStoreTest, EndingASessionReleasesItsPinsAndPrivateBlocks) {
  const auto prompt = Prompt(64, 5);
  WriteAndCommit(1, prompt);
  ASSERT_TRUE(store_->Allocate(1, layout_->id, 3).ok());
  EXPECT_EQ(store_->PinnedBy(1), 4);
  EXPECT_EQ(store_->Stats().tiers[0].blocks, 7u);
  store_->ReleaseSession(1);
  EXPECT_EQ(store_->PinnedBy(1), 0);
  EXPECT_EQ(store_->Stats().tiers[0].blocks, 4u);  // committed blocks stay cached, unpinned
  EXPECT_EQ(store_->DemoteFromGpu(0).moved, 4);
}

TEST_F(BlockStoreTest, FullPoolOfPinnedBlocksRefusesAllocation) {
  const uint64_t page = layout_->resident.page_bytes();
  Reset(page * 8, 64ull << 20);
  ASSERT_TRUE(store_->Allocate(1, layout_->id, 8).ok());
  auto more = store_->Allocate(1, layout_->id, 1);
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(BlockStoreTest, AllocationDemotesUnpinnedBlocksWhenThePoolIsFull) {
  const uint64_t page = layout_->resident.page_bytes();
  Reset(page * 8, 64ull << 20);
  const auto prompt = Prompt(128, 6);
  const auto ids = WriteAndCommit(1, prompt);
  ASSERT_TRUE(store_->Release(1, ids).ok());
  ASSERT_TRUE(store_->Allocate(2, layout_->id, 4).ok());
  EXPECT_GE(store_->Stats().page_outs, 4u);
}

TEST_F(BlockStoreTest, BadInputIsRejectedAndChangesNothing) {
  auto blocks = store_->Allocate(1, layout_->id, 2);
  ASSERT_TRUE(blocks.ok());
  const BlockId id = (*blocks)[0].id;
  EXPECT_EQ(store_->Allocate(1, layout_->id, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Allocate(1, 12345, 1).status().code(), absl::StatusCode::kNotFound);
  std::string short_page(10, '\0');
  std::vector<std::string_view> data{short_page};
  std::vector<BlockId> ids{id};
  EXPECT_EQ(store_->Write(1, ids, data).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Write(2, ids, data).code(), absl::StatusCode::kNotFound);  // not its block
  std::vector<CommitItem> bad{{id, "", std::vector<int32_t>(15, 1)}};
  EXPECT_EQ(store_->Commit(1, "t", bad).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<CommitItem> bad_parent{{id, std::string(16, 'x'), std::vector<int32_t>(16, 1)}};
  EXPECT_EQ(store_->Commit(1, "t", bad_parent).status().code(), absl::StatusCode::kNotFound);
  std::vector<CommitItem> twice{{id, "", std::vector<int32_t>(16, 1)}, {id, "", std::vector<int32_t>(16, 2)}};
  EXPECT_EQ(store_->Commit(1, "t", twice).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<BlockId> unknown{999999};
  EXPECT_EQ(store_->Release(1, unknown).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Read(1, unknown).status().code(), absl::StatusCode::kNotFound);
  const auto s = store_->Stats();
  EXPECT_EQ(s.blocks_committed, 0u);
  EXPECT_EQ(s.tiers[0].blocks, 2u);
}

TEST_F(BlockStoreTest, CorruptHostRecordIsDroppedNotServed) {
  const auto prompt = Prompt(64, 7);
  const auto ids = WriteAndCommit(1, prompt);
  ASSERT_TRUE(store_->Release(1, ids).ok());
  ASSERT_EQ(store_->DemoteFromGpu(0).moved, 4);
  ASSERT_TRUE(store_->CorruptHostRecordForTest(ids[2]));
  auto hit = store_->Lookup(2, "t", layout_->id, prompt, true, true);
  ASSERT_TRUE(hit.ok());
  EXPECT_EQ(hit->blocks.size(), 2u);  // the prefix ends before the corrupt block
  EXPECT_EQ(store_->Stats().checksum_failures, 1u);
  EXPECT_EQ(store_->PinnedBy(2), 2);
}

TEST_F(BlockStoreTest, ConcurrentSessionsAlwaysReadTheirOwnPromptsContent) {
  Reset(layout_->resident.page_bytes() * 48, 64ull << 20);  // small pool: blocks keep moving between tiers
  const auto r = testing::RunConcurrentSessions(*store_, *layout_, 4, 25, /*demote_host=*/false);
  EXPECT_EQ(r.failures, 0) << r.first_failure;
  EXPECT_GT(r.pages_checked, 100);
  EXPECT_EQ(store_->Stats().pinned_blocks, 0u);
}

// The same workload through all three tiers: a small pool and a small host tier over an SSD tier.
TEST_F(BlockStoreTest, ConcurrentSessionsAcrossThreeTiersReadTheirOwnContent) {
  Reset(layout_->resident.page_bytes() * 48, layout_->offload_record_bytes() * 24, 64ull << 20);
  const auto r = testing::RunConcurrentSessions(*store_, *layout_, 4, 25, /*demote_host=*/true);
  EXPECT_EQ(r.failures, 0) << r.first_failure;
  EXPECT_GT(r.pages_checked, 100);
  EXPECT_EQ(store_->Stats().pinned_blocks, 0u);
  EXPECT_GT(store_->Stats().ssd_writes, 0u);  // blocks really went through the SSD tier
  EXPECT_GT(store_->Stats().ssd_reads, 0u);
}

TEST_F(BlockStoreTest, BlocksGoDownToSsdAndComeBackVerified) {
  Reset(64ull << 20, 64ull << 20, 64ull << 20);
  const auto prompt = Prompt(320, 8);
  const auto ids = WriteAndCommit(1, prompt);
  ASSERT_TRUE(store_->Release(1, ids).ok());
  ASSERT_EQ(store_->DemoteFromGpu(0).moved, 20);
  ASSERT_EQ(store_->DemoteFromHost(0).moved, 20);
  auto s = store_->Stats();
  ASSERT_EQ(s.tiers.size(), 3u);
  EXPECT_EQ(s.tiers[2].blocks, 20u);
  EXPECT_EQ(s.tiers[1].blocks, 0u);
  auto hit = store_->Lookup(2, "t", layout_->id, prompt, true, true);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks.size(), 20u);
  VerifyBlocks(2, prompt, Ids(*hit), 1.0f / 127.0f);
  s = store_->Stats();
  EXPECT_EQ(s.ssd_reads, 20u);
  EXPECT_EQ(s.tiers[2].blocks, 0u);  // tiers are exclusive
}

TEST_F(BlockStoreTest, WarmRestartServesWhatIsOnSsd) {
  Reset(64ull << 20, 64ull << 20, 64ull << 20);
  const auto prompt = Prompt(160, 9);
  const auto ids = WriteAndCommit(1, prompt);
  ASSERT_TRUE(store_->Release(1, ids).ok());
  ASSERT_EQ(store_->DemoteFromGpu(0).moved, 10);
  ASSERT_EQ(store_->DemoteFromHost(0).moved, 10);
  Reset(64ull << 20, 64ull << 20, 64ull << 20);  // a new daemon on the same disk
  EXPECT_EQ(store_->Stats().ssd_restored, 10u);
  auto hit = store_->Lookup(3, "t", layout_->id, prompt, true, true);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks.size(), 10u);
  VerifyBlocks(3, prompt, Ids(*hit), 1.0f / 127.0f);
  // Another tenant still sees nothing, and the restored chain accepts new children.
  auto other = store_->Lookup(4, "u", layout_->id, prompt, false, false);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->blocks.empty());
}

TEST_F(BlockStoreTest, HostPressureDemotesToSsdInsteadOfDropping) {
  const uint64_t record = layout_->offload_record_bytes();
  Reset(64ull << 20, record * 4, 64ull << 20);  // host holds 4 blocks
  const auto prompt = Prompt(160, 10);
  const auto ids = WriteAndCommit(1, prompt);
  ASSERT_TRUE(store_->Release(1, ids).ok());
  EXPECT_EQ(store_->DemoteFromGpu(0).moved, 10);
  const auto s = store_->Stats();
  EXPECT_EQ(s.blocks_dropped, 0u);
  EXPECT_LE(s.tiers[1].blocks, 4u);
  EXPECT_EQ(s.tiers[1].blocks + s.tiers[2].blocks, 10u);
  auto hit = store_->Lookup(2, "t", layout_->id, prompt, true, true);
  ASSERT_TRUE(hit.ok());
  EXPECT_EQ(hit->blocks.size(), 10u);
}

}  // namespace
}  // namespace kvtier
