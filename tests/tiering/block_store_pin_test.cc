// Pinned blocks are never dropped: regression tests for paths found by the reliability campaign
// (docs/reliability.md) that freed a block while a session held a pin on it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

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

  // Pins `prompt` with page-in, reads it back and checks every page against the oracle; returns the number
  // of blocks that verified (== prompt blocks when all is well), -1 when a call failed.
  int VerifyPrompt(SessionId s, const std::vector<int32_t>& prompt) {
    auto hit = store_->Lookup(s, "t", layout_->id, prompt, /*pin=*/true, /*promote=*/true);
    if (!hit.ok()) return -1;
    std::vector<BlockId> ids;
    for (const auto& b : hit->blocks) ids.push_back(b.block_id);
    auto pages = store_->Read(s, ids);
    int good = -1;
    if (pages.ok()) {
      good = 0;
      for (size_t b = 0; b < ids.size(); ++b) {
        const auto c = testing::CheckActivationPageSegments(
            layout_->activation_geometry, Format::kFp16, testing::BlockSeed(prompt, 16, static_cast<int>(b)),
            reinterpret_cast<const uint8_t*>((*pages)[b].data()), 1.0f / 127.0f + 2e-3f);
        if (c.ok()) ++good;
      }
    }
    (void)store_->Release(s, ids);
    return good;
  }
  // Blocks of `prompt` found without I/O and without pinning (where they are).
  size_t Present(SessionId s, const std::vector<int32_t>& prompt) {
    auto hit = store_->Lookup(s, "t", layout_->id, prompt, /*pin=*/false, /*promote=*/false);
    return hit.ok() ? hit->blocks.size() : 0;
  }
  // Writes the prompts (oracle content), then moves every block to the SSD tier.
  void WriteToSsd(const std::vector<std::vector<int32_t>>& prompts, SessionId writer) {
    for (const auto& p : prompts) {
      auto ids = testing::WritePromptBlocks(*store_, *layout_, writer, p);
      ASSERT_TRUE(ids.ok()) << ids.status();
      store_->ReleaseSession(writer);
    }
    store_->DemoteFromGpu(0);
    store_->DemoteFromHost(0);
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

// The interleaving the 32-worker soaks hit: while a shrink has released the table lock to move the records
// of its removed slab, (1) a deduplicated Commit pins blocks that live on SSD (after the shrink decided what
// to keep) and (2) a demotion wants to write host blocks into the slab that stays. The demotion must wait
// for the shrink, and no block pinned in the window may be lost.
TEST_F(BlockStorePinTest, ShrinkHoldsSsdWritesOffAndKeepsBlocksPinnedWhileItRuns) {
  const SessionId writer = 1, committer = 2, reader = 3;
  std::vector<std::vector<int32_t>> on_ssd, on_host;
  for (int p = 0; p < 14; ++p) on_ssd.push_back(testing::ScenarioPrompt(16 * 12, 100 + p));  // ~1.7 MB: 2 slabs
  WriteToSsd(on_ssd, writer);
  ASSERT_EQ(store_->Stats().tiers[1].blocks, 0u);
  for (int p = 0; p < 6; ++p) {
    on_host.push_back(testing::ScenarioPrompt(16 * 12, 200 + p));
    ASSERT_TRUE(testing::WritePromptBlocks(*store_, *layout_, writer, on_host.back()).ok());
    store_->ReleaseSession(writer);
  }
  store_->DemoteFromGpu(0);
  ASSERT_GT(store_->Stats().tiers[1].blocks, 0u);

  std::atomic<bool> pinned{false}, demoted{false};
  bool demoted_in_window = false;
  int hook_calls = 0;
  std::thread intruder;
  store_->SetSsdShrinkHookForTesting([&] {
    if (hook_calls++ > 0) return;
    intruder = std::thread([&] {
      // Every SSD prompt committed again: deduplicated (pinned where it lives) or, where the shrink evicted
      // it, written anew.
      for (const auto& p : on_ssd) EXPECT_TRUE(testing::WritePromptBlocks(*store_, *layout_, committer, p).ok());
      pinned = true;
      store_->DemoteFromHost(0);  // into the slab that stays, if it could
      demoted = true;
    });
    for (int i = 0; i < 1000 && !pinned; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (int i = 0; i < 40 && !demoted; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    demoted_in_window = demoted;
  });
  ASSERT_TRUE(store_->SetLimits(0, 0, 1ull << 20).ok());
  intruder.join();
  store_->SetSsdShrinkHookForTesting(nullptr);
  EXPECT_EQ(hook_calls, 1);
  EXPECT_TRUE(pinned);
  EXPECT_FALSE(demoted_in_window) << "an SSD demotion ran while the shrink moved records";

  const StoreStats st = store_->Stats();
  EXPECT_EQ(st.pinned_blocks_dropped, 0u);
  EXPECT_EQ(st.tiers[2].capacity_bytes, 1ull << 20) << "no demotion took the room made: the shrink completes";
  for (size_t p = 0; p < on_ssd.size(); ++p) {
    EXPECT_EQ(Present(reader, on_ssd[p]), 12u) << "prompt " << p << " lost pinned blocks";
    EXPECT_EQ(VerifyPrompt(reader, on_ssd[p]), 12) << "prompt " << p;
  }
  store_->ReleaseSession(committer);
  EXPECT_EQ(store_->Stats().pinned_blocks, 0u);
}

// Pinned data alone larger than the new size: the shrink evicts nothing pinned and stops at the smallest
// size (whole slabs) that holds it; once the pins are gone the same shrink goes through.
TEST_F(BlockStorePinTest, ShrinkStopsAboveTheRequestWhenPinnedDataDoesNotFit) {
  const SessionId writer = 1, reader = 2;
  std::vector<std::vector<int32_t>> prompts;
  for (int p = 0; p < 14; ++p) prompts.push_back(testing::ScenarioPrompt(16 * 12, 300 + p));
  WriteToSsd(prompts, writer);
  std::vector<BlockId> held;
  for (const auto& p : prompts) {
    auto hit = store_->Lookup(reader, "t", layout_->id, p, /*pin=*/true, /*promote=*/false);
    ASSERT_TRUE(hit.ok()) << hit.status();
    ASSERT_EQ(hit->blocks.size(), 12u);
    for (const auto& b : hit->blocks) {
      EXPECT_EQ(b.tier, Tier::kSsd);
      held.push_back(b.block_id);
    }
  }
  ASSERT_TRUE(store_->SetLimits(0, 0, 1ull << 20).ok());
  StoreStats st = store_->Stats();
  EXPECT_EQ(st.tiers[2].capacity_bytes, 2ull << 20) << "1.7 MB of pinned records need both slabs";
  EXPECT_EQ(st.pinned_blocks_dropped, 0u);
  EXPECT_EQ(st.tiers[2].blocks, prompts.size() * 12);
  for (const auto& p : prompts) EXPECT_EQ(Present(reader, p), 12u);

  ASSERT_TRUE(store_->Release(reader, held).ok());
  ASSERT_TRUE(store_->SetLimits(0, 0, 1ull << 20).ok());
  st = store_->Stats();
  EXPECT_EQ(st.tiers[2].capacity_bytes, 1ull << 20);
  EXPECT_LE(st.tiers[2].used_bytes, 1ull << 20);
  int verified = 0;
  for (const auto& p : prompts) {
    const size_t n = Present(reader, p);
    if (n == 0) continue;
    const int good = VerifyPrompt(reader, p);
    EXPECT_EQ(good, static_cast<int>(n));
    verified += good;
  }
  EXPECT_GT(verified, 0);
}

// Several sessions commit (deduplicated commits pin blocks wherever they live), demote and read back while
// another thread shrinks and grows the SSD tier over and over. A session's pinned blocks are all there
// whenever it looks, every page read matches the oracle, and no pinned block was ever dropped.
TEST_F(BlockStorePinTest, PinnedBlocksSurviveRepeatedResizesUnderLoad) {
  std::vector<std::vector<int32_t>> pool;
  for (int p = 0; p < 40; ++p) pool.push_back(testing::ScenarioPrompt(16 * (4 + p % 5), 400 + p));  // ~2.5 MB
  std::atomic<bool> done{false};
  std::atomic<int> lost{0}, bad{0}, failed{0}, checked{0}, resizes{0}, contested{0};
  std::vector<std::thread> workers;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(t);
      const SessionId sid = 10 + t;
      // What this session holds pinned: (prompt, blocks of it pinned). Kept for a few iterations.
      std::vector<std::pair<const std::vector<int32_t>*, size_t>> held;
      for (int iter = 0; std::chrono::steady_clock::now() < until; ++iter) {
        const auto& prompt = pool[rng() % pool.size()];
        const size_t blocks = prompt.size() / 16;
        if (!testing::WritePromptBlocks(*store_, *layout_, sid, prompt).ok()) {
          ++failed;
          store_->ReleaseSession(sid);
          held.clear();
          continue;
        }
        held.emplace_back(&prompt, blocks);
        // And another prompt's cached prefix pinned where it lives (often on SSD).
        const auto& other = pool[rng() % pool.size()];
        auto hit = store_->Lookup(sid, "t", layout_->id, other, /*pin=*/true, /*promote=*/false);
        if (hit.ok()) held.emplace_back(&other, hit->blocks.size());
        store_->DemoteFromGpu(static_cast<int64_t>(rng() % 32));
        store_->DemoteFromHost(static_cast<int64_t>(rng() % 32));
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
        for (const auto& [p, n] : held)
          if (Present(sid, *p) < n) ++lost;  // pinned by this session: must be there
        if (iter % 3 == 0) {
          const int good = VerifyPrompt(sid, prompt);
          if (good < 0) {
            ++failed;
          } else {
            bad += static_cast<int>(blocks) - good;
            checked += good;
          }
        }
        if (held.size() >= 6) {
          store_->ReleaseSession(sid);
          held.clear();
          if (rng() % 2 == 0) {  // everything unpinned down to SSD (which holds about half of the pool)
            store_->DemoteFromGpu(0);
            store_->DemoteFromHost(0);
          }
        }
      }
      store_->ReleaseSession(sid);
    });
  }
  std::thread resizer([&] {
    std::mt19937 rng(7);
    while (!done) {
      if (!store_->SetLimits(0, 0, 2ull << 20).ok()) ++failed;
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));  // let demotions reach the new slab
      if (store_->Stats().tiers[2].used_bytes > (1ull << 20)) ++contested;  // this shrink must move or evict
      if (!store_->SetLimits(0, 0, 1ull << 20).ok()) ++failed;
      resizes += 2;
    }
  });
  for (auto& w : workers) w.join();
  done = true;
  resizer.join();
  EXPECT_GT(resizes.load(), 10);
  EXPECT_GT(contested.load(), 0) << "no shrink had anything to move: the test did not test much";
  EXPECT_GT(checked.load(), 0);
  EXPECT_EQ(lost.load(), 0) << "a session's pinned blocks went missing";
  EXPECT_EQ(bad.load(), 0) << "pages that did not match the oracle";
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(store_->Stats().pinned_blocks_dropped, 0u);
  EXPECT_EQ(store_->Stats().pinned_blocks, 0u);
  // Whatever is still cached verifies.
  for (const auto& p : pool) {
    const size_t n = Present(99, p);
    if (n > 0) {
      EXPECT_EQ(VerifyPrompt(99, p), static_cast<int>(n));
    }
  }
}

}  // namespace
}  // namespace kvtier
