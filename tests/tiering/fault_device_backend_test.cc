// BlockStore over a FaultInjectingDeviceBackend: copies that fail (leaving garbage in host buffers) or
// run slow make calls fail or blocks stay where they were, but a page that is served always verifies.
#include "tiering/fault_device_backend.h"

#include <gtest/gtest.h>

#include <thread>

#include "kernels/testing/kv_oracle.h"
#include "tests/tiering/store_scenarios.h"
#include "tiering/block_store.h"

namespace kvtier {
namespace {

constexpr LayoutShape kShape{2, 2, 64, 16};

TEST(FaultDeviceBackend, FailedCopiesAreNeverServedAsData) {
  std::vector<DeviceFaultRule> rules = {
      {DeviceOp::kPageOut, 0.3, true, absl::ZeroDuration()},
      {DeviceOp::kPageIn, 0.3, true, absl::ZeroDuration()},
      {DeviceOp::kReadActivations, 0.2, true, absl::ZeroDuration()},
      {DeviceOp::kWriteActivations, 0.1, true, absl::ZeroDuration()},
      {DeviceOp::kPageIn, 0.2, false, absl::Milliseconds(2)},
  };
  auto fake = std::make_unique<FaultInjectingDeviceBackend>(MakeHostDeviceBackend(2), rules, 42);
  FaultInjectingDeviceBackend* faults = fake.get();
  BlockStoreOptions o;
  o.gpu_pool_bytes = 2 << 20;
  o.host_tier_bytes = 8 << 20;
  BlockStore store(o, std::move(fake), MakeAlignedHostAllocator());
  LayoutSpec spec;
  spec.shape = kShape;
  spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
  spec.policy_fingerprint = "fp16/int8";
  auto layout = store.RegisterLayout(spec);
  ASSERT_TRUE(layout.ok()) << layout.status();

  int served = 0, bad = 0, call_failures = 0;
  for (int iter = 0; iter < 60; ++iter) {
    const SessionId sid = 10 + iter % 3;
    const auto prompt = testing::ScenarioPrompt(16 * (2 + iter % 5), iter % 7);
    if (!testing::WritePromptBlocks(store, **layout, sid, prompt).ok()) ++call_failures;
    store.ReleaseSession(sid);
    store.DemoteFromGpu(0);
    auto hit = store.Lookup(sid, "t", (*layout)->id, prompt, true, true);
    ASSERT_TRUE(hit.ok()) << hit.status();
    std::vector<BlockId> ids;
    for (const auto& b : hit->blocks) ids.push_back(b.block_id);
    auto pages = store.Read(sid, ids);
    if (!pages.ok()) {
      ++call_failures;
    } else {
      for (size_t b = 0; b < ids.size(); ++b) {
        const auto c = testing::CheckActivationPageSegments(
            (*layout)->activation_geometry, Format::kFp16, testing::BlockSeed(prompt, 16, static_cast<int>(b)),
            reinterpret_cast<const uint8_t*>((*pages)[b].data()), 1.0f / 127.0f + 2e-3f);
        ++served;
        bad += !c.ok();
      }
    }
    store.ReleaseSession(sid);
  }
  EXPECT_EQ(bad, 0) << "pages served that do not match their prompt";
  EXPECT_GT(served, 50);
  EXPECT_GT(call_failures, 0) << "the faults never reached a caller";
  EXPECT_GT(faults->faults_injected(), 10);
  EXPECT_EQ(store.Stats().pinned_blocks, 0u);
}

// Pages being paged out (by another caller here; the mover alike) free their GPU room when their copies
// finish: an Allocate that finds the tier full of them waits instead of reporting the pool full. With
// every page private to a session instead, nothing can free room, and Allocate fails at once.
TEST(FaultDeviceBackend, AllocateWaitsForPagesOnTheirWayOutButNotForPinnedOnes) {
  std::vector<DeviceFaultRule> rules = {{DeviceOp::kPageOut, 1.0, false, absl::Milliseconds(300)}};
  LayoutSpec spec;
  spec.shape = kShape;
  spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
  spec.policy_fingerprint = "fp16/int8";
  const uint64_t page = 2 * 2 * 2 * 16 * 64 * 2;  // layers x K|V x heads x tokens x head_dim x fp16
  BlockStoreOptions o;
  o.gpu_pool_bytes = 4 * page;
  o.host_tier_bytes = 8 << 20;
  o.gpu_high_watermark = 1.0;                  // no background mover: the page-out below is the only one
  o.gpu_room_wait = std::chrono::seconds(5);   // generous: the point is waiting instead of failing
  BlockStore store(o, std::make_unique<FaultInjectingDeviceBackend>(MakeHostDeviceBackend(1), rules, 7),
                   MakeAlignedHostAllocator());
  auto layout = store.RegisterLayout(spec);
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ((*layout)->resident.page_bytes(), page);
  const auto prompt = testing::ScenarioPrompt(64, 1);
  ASSERT_TRUE(testing::WritePromptBlocks(store, **layout, 1, prompt).ok());
  store.ReleaseSession(1);  // four committed, unpinned blocks fill the GPU tier

  std::thread demoter([&] { store.DemoteFromGpu(0); });
  absl::SleepFor(absl::Milliseconds(100));  // its page-out now holds all four pages for 300 ms
  auto fresh = store.Allocate(2, (*layout)->id, 2);
  demoter.join();
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  auto more = store.Allocate(2, (*layout)->id, 2);
  ASSERT_TRUE(more.ok()) << more.status();  // the GPU tier now holds four private pages of session 2

  const absl::Time start = absl::Now();
  EXPECT_EQ(store.Allocate(3, (*layout)->id, 1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));  // no wait (of up to 5 s): nothing was on its way out
  // The blocks paged out meanwhile are intact on the host tier.
  auto hit = store.Lookup(4, "t", (*layout)->id, prompt, false, false);
  ASSERT_TRUE(hit.ok());
  EXPECT_EQ(hit->blocks.size(), 4u);
  store.ReleaseSession(2);
}

}  // namespace
}  // namespace kvtier
