// BlockStore over a FaultInjectingDeviceBackend: copies that fail (leaving garbage in host buffers) or
// run slow make calls fail or blocks stay where they were, but a page that is served always verifies.
#include "tiering/fault_device_backend.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace kvtier
