// The BlockStore's cache-policy layer (cache_policy.h): KV events and snapshots, tier-aware lookups,
// retention pins with TTL, invalidation, warm-up, per-tenant quotas, eviction policies and admission.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "tests/tiering/store_scenarios.h"
#include "tiering/block_store.h"
#include "tiering/eviction_policy.h"
#include "tiering/kv_events.h"

namespace kvtier {
namespace {

constexpr LayoutShape kShape{4, 2, 64, 16};

LayoutSpec Spec() { return testing::Fp16Int8Spec(kShape); }

class CachePolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("kvtier-cp-");
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Make(uint64_t gpu, uint64_t host, uint64_t ssd_bytes = 0, CachePolicyOptions policy = {}) {
    store_.reset();
    BlockStoreOptions o;
    o.gpu_pool_bytes = gpu;
    o.host_tier_bytes = host;
    o.policy = policy;
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
    auto l = store_->RegisterLayout(Spec());
    ASSERT_TRUE(l.ok()) << l.status();
    layout_ = *l;
  }
  std::vector<int32_t> Prompt(int n, int salt) { return testing::ScenarioPrompt(n, salt); }
  // Writes, commits and releases every full block of `prompt` (the blocks stay cached, unpinned).
  std::vector<BlockId> Put(SessionId s, const std::vector<int32_t>& prompt, std::string_view salt = "t") {
    auto ids = testing::WritePromptBlocks(*store_, *layout_, s, prompt, salt);
    EXPECT_TRUE(ids.ok()) << ids.status();
    if (!ids.ok()) return {};
    EXPECT_TRUE(store_->Release(s, *ids).ok());
    return *ids;
  }
  std::vector<KvEvent> Drain(uint64_t* cursor, uint64_t only_ns = 0) {
    auto r = store_->events().Read(*cursor, 1 << 20,
                                   [&](const KvEvent& e) { return only_ns == 0 || e.tenant_ns == only_ns; },
                                   std::chrono::milliseconds(0));
    EXPECT_EQ(r.lost, 0u);
    *cursor = r.next;
    return r.events;
  }
  int64_t Cached(const std::vector<int32_t>& prompt, std::string_view salt = "t", Tier* first_tier = nullptr) {
    auto hit = store_->Lookup(999, salt, layout_->id, prompt, false, false);
    EXPECT_TRUE(hit.ok());
    if (first_tier != nullptr && hit.ok() && !hit->blocks.empty()) *first_tier = hit->blocks[0].tier;
    return hit.ok() ? static_cast<int64_t>(hit->blocks.size()) : -1;
  }
  uint64_t ResidentBytes() const { return layout_->resident.page_bytes() + layout_->resident.param_bytes(); }

  std::filesystem::path dir_;
  std::unique_ptr<BlockStore> store_;
  const Layout* layout_ = nullptr;
};

TEST_F(CachePolicyTest, EventsCoverStoreMoveAndRemoveWithContiguousSequenceNumbers) {
  Make(64ull << 20, 64ull << 20, 64ull << 20);
  uint64_t cursor = store_->events().next_seq();
  const auto prompt = Prompt(48, 1);
  Put(1, prompt);
  auto ev = Drain(&cursor);
  ASSERT_EQ(ev.size(), 3u);
  const uint64_t ns = BlockStore::TenantNs("t");
  for (size_t i = 0; i < ev.size(); ++i) {
    EXPECT_EQ(ev[i].type, KvEventType::kStored);
    EXPECT_EQ(ev[i].tier, static_cast<uint8_t>(Tier::kGpu));
    EXPECT_EQ(ev[i].tenant_ns, ns);
    EXPECT_EQ(ev[i].layout_id, layout_->id);
    EXPECT_EQ(ev[i].format, "fp16");
    EXPECT_EQ(ev[i].block_size, 16);
    EXPECT_EQ(ev[i].tokens, std::vector<int32_t>(prompt.begin() + 16 * i, prompt.begin() + 16 * (i + 1)));
    if (i > 0) {
      EXPECT_EQ(ev[i].seq, ev[i - 1].seq + 1);
      EXPECT_EQ(ev[i].parent, ev[i - 1].key);
    } else {
      EXPECT_TRUE(ev[i].parent.IsZero());
    }
  }
  EXPECT_EQ(ev[1].key, ChainKey(ev[0].key, layout_->id, "t", std::span(prompt).subspan(16, 16)));
  ASSERT_EQ(store_->DemoteFromGpu(0).moved, 3);
  ASSERT_EQ(store_->DemoteFromHost(0).moved, 3);
  ev = Drain(&cursor);
  ASSERT_EQ(ev.size(), 6u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(ev[i].type, KvEventType::kMoved);
    EXPECT_EQ(ev[i].from_tier, static_cast<uint8_t>(Tier::kGpu));
    EXPECT_EQ(ev[i].tier, static_cast<uint8_t>(Tier::kHost));
    EXPECT_EQ(ev[i].format, "int8");
    EXPECT_EQ(ev[3 + i].tier, static_cast<uint8_t>(Tier::kSsd));
  }
  auto hit = store_->Lookup(2, "t", layout_->id, prompt, true, true);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks.size(), 3u);
  ev = Drain(&cursor);
  ASSERT_EQ(ev.size(), 6u);  // SSD -> host, host -> GPU
  EXPECT_EQ(ev.back().tier, static_cast<uint8_t>(Tier::kGpu));
  EXPECT_EQ(ev.back().from_tier, static_cast<uint8_t>(Tier::kHost));
  store_->ReleaseSession(2);
  BlockStore::InvalidateScope scope;
  scope.kind = BlockStore::InvalidateScope::Kind::kTenant;
  scope.tenant_ns = ns;
  auto inv = store_->Invalidate(scope);
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->removed, 3);
  ev = Drain(&cursor);
  ASSERT_EQ(ev.size(), 3u);
  for (const auto& e : ev) {
    EXPECT_EQ(e.type, KvEventType::kRemoved);
    EXPECT_EQ(e.reason, RemoveReason::kInvalidated);
  }
  EXPECT_EQ(Cached(prompt), 0);
  EXPECT_EQ(store_->GetPolicyStats().removed_by_reason[static_cast<int>(RemoveReason::kInvalidated)], 3u);
}

TEST_F(CachePolicyTest, CorruptBlockIsReportedRemovedAsCorrupt) {
  Make(64ull << 20, 64ull << 20);
  const auto prompt = Prompt(32, 2);
  const auto ids = Put(1, prompt);
  ASSERT_EQ(store_->DemoteFromGpu(0).moved, 2);
  uint64_t cursor = store_->events().next_seq();
  ASSERT_TRUE(store_->CorruptHostRecordForTest(ids[1]));
  auto hit = store_->Lookup(2, "t", layout_->id, prompt, true, true);
  ASSERT_TRUE(hit.ok());
  EXPECT_EQ(hit->blocks.size(), 1u);
  bool saw = false;
  for (const auto& e : Drain(&cursor))
    if (e.type == KvEventType::kRemoved) {
      EXPECT_EQ(e.reason, RemoveReason::kCorrupt);
      saw = true;
    }
  EXPECT_TRUE(saw);
}

TEST_F(CachePolicyTest, SlowConsumerGetsAGapAndResyncsFromASnapshot) {
  CachePolicyOptions p;
  p.event_buffer = 16;
  Make(64ull << 20, 64ull << 20, 0, p);
  uint64_t cursor = store_->events().next_seq();
  // A prompt from another tenant, to check the snapshot filter.
  Put(1, Prompt(64, 3), "other");
  for (int i = 0; i < 10; ++i) Put(1, Prompt(48, 10 + i));  // 30 events + 4: more than the ring holds
  auto r = store_->events().Read(cursor, 1000, nullptr, std::chrono::milliseconds(0));
  EXPECT_GT(r.lost, 0u);
  EXPECT_EQ(r.events.size() + r.lost, 34u);
  // Resync: the snapshot is current to next_seq - 1; replaying events from there keeps it exact.
  const uint64_t ns = BlockStore::TenantNs("t");
  auto snap = store_->TakeSnapshot(ns);
  EXPECT_EQ(snap.blocks.size(), 30u);
  for (const auto& b : snap.blocks) EXPECT_EQ(b.tenant_ns, ns);
  absl::flat_hash_map<BlockKey, uint8_t> view;
  for (const auto& b : snap.blocks) view[b.key] = static_cast<uint8_t>(b.tier);
  cursor = snap.next_seq;
  ASSERT_EQ(store_->DemoteFromGpu(5).moved, 5);
  for (const auto& e : Drain(&cursor, ns)) {
    if (e.type == KvEventType::kRemoved) {
      view.erase(e.key);
    } else {
      view[e.key] = e.tier;
    }
  }
  auto now = store_->TakeSnapshot(ns);
  ASSERT_EQ(now.blocks.size(), view.size());
  for (const auto& b : now.blocks) EXPECT_EQ(view[b.key], static_cast<uint8_t>(b.tier));
}

TEST_F(CachePolicyTest, ReaderWaitsForTheNextEventAndAppendNeverWaitsForReaders) {
  Make(64ull << 20, 64ull << 20);
  const uint64_t start = store_->events().next_seq();
  std::atomic<size_t> got{0};
  std::thread reader([&] {
    auto r = store_->events().Read(start, 100, nullptr, std::chrono::milliseconds(5000));
    got = r.events.size();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  Put(1, Prompt(16, 4));
  reader.join();
  EXPECT_EQ(got.load(), 1u);
  // Nobody reads: thousands of events still go through at once.
  CachePolicyOptions p;
  p.event_buffer = 64;
  Make(256ull << 20, 64ull << 20, 0, p);
  for (int i = 0; i < 100; ++i) Put(1, Prompt(64, 100 + i));
  EXPECT_EQ(store_->events().next_seq(), 401u);
}

TEST_F(CachePolicyTest, LookupSaysWhereEachBlockIsAndHowLongItTakesToReachTheGpu) {
  CachePolicyOptions p;
  p.host_to_gpu_bytes_per_second = 1e9;
  p.ssd_read_bytes_per_second = 1e8;
  Make(64ull << 20, 64ull << 20, 64ull << 20, p);
  const auto prompt = Prompt(64, 5);
  Put(1, prompt);
  ASSERT_EQ(store_->DemoteFromGpu(3).moved, 3);  // leaves first: blocks 3, 2, 1
  ASSERT_EQ(store_->DemoteFromHost(1).moved, 1);  // block 3 to SSD
  auto hit = store_->Lookup(2, "t", layout_->id, prompt, false, false);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks.size(), 4u);
  int per_tier[4] = {};
  for (const auto& b : hit->blocks) {
    ++per_tier[static_cast<int>(b.tier)];
    const double record = static_cast<double>(layout_->offload_record_bytes(b.key == hit->blocks[0].key));
    const double want = b.tier == Tier::kGpu ? 0 : b.tier == Tier::kHost ? record / 1e9 : record / 1e9 + record / 1e8;
    EXPECT_DOUBLE_EQ(b.eta_seconds, want) << TierName(b.tier);
  }
  EXPECT_EQ(per_tier[1], 1);
  EXPECT_EQ(per_tier[2], 2);
  EXPECT_EQ(per_tier[3], 1);
  const auto st = store_->GetPolicyStats();
  EXPECT_EQ(st.lookup_hits_by_tier[1] + st.lookup_hits_by_tier[2] + st.lookup_hits_by_tier[3], 4u);
  EXPECT_EQ(st.lookup_hits_by_tier[2], 2u);
  EXPECT_EQ(st.lookup_hits_by_tier[3], 1u);
  EXPECT_EQ(st.lookup_blocks_requested, 4u);
  // A measured page-in replaces the prior with what the device does.
  ASSERT_TRUE(store_->Lookup(2, "t", layout_->id, prompt, true, true).ok());
  EXPECT_NE(store_->GetPolicyStats().host_to_gpu_bytes_per_second, 1e9);
}

TEST_F(CachePolicyTest, HardPinKeepsBlocksUntilItsTtlEnds) {
  Make(64ull << 20, 64ull << 20);
  const auto prompt = Prompt(64, 6);
  Put(1, prompt);
  // Bad input changes nothing.
  EXPECT_EQ(store_->PinPrefix("t", layout_->id, prompt, -5, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->PinPrefix("t", layout_->id, prompt, 0, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->PinPrefix("t", 12345, prompt, 100, true).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->PinPrefix("u", layout_->id, prompt, 100, true).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetPolicyStats().pins_active, 0u);
  auto pin = store_->PinPrefix("t", layout_->id, prompt, 300, true);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->blocks, 4);
  EXPECT_EQ(store_->GetPolicyStats().pins_active, 1u);
  EXPECT_EQ(store_->DemoteFromGpu(0).moved, 0);  // pinned: stays
  // Another tenant cannot release it.
  EXPECT_EQ(store_->ReleasePin(pin->pin_id, BlockStore::TenantNs("u")).code(), absl::StatusCode::kNotFound);
  std::this_thread::sleep_for(std::chrono::milliseconds(350));
  store_->RunPolicyMaintenance();
  const auto st = store_->GetPolicyStats();
  EXPECT_EQ(st.pins_active, 0u);
  EXPECT_EQ(st.pins_expired, 1u);
  EXPECT_EQ(store_->DemoteFromGpu(0).moved, 4);
}

TEST_F(CachePolicyTest, RetentionHintMakesBlocksTheLastVictims) {
  Make(64ull << 20, 64ull << 20);
  const auto keep = Prompt(32, 7), other = Prompt(32, 8);
  Put(1, keep);
  Put(1, other);
  auto pin = store_->PinPrefix("t", layout_->id, keep, 60000, /*hard=*/false);
  ASSERT_TRUE(pin.ok());
  Put(1, other);  // `other` is now the most recently used, `keep` the least
  ASSERT_EQ(store_->DemoteFromGpu(2).moved, 2);
  Tier t = Tier::kSsd;
  EXPECT_EQ(Cached(keep, "t", &t), 2);
  EXPECT_EQ(t, Tier::kGpu);
  ASSERT_TRUE(store_->ReleasePin(pin->pin_id, BlockStore::TenantNs("t")).ok());
  EXPECT_EQ(store_->GetPolicyStats().retention_hint_blocks, 0u);
}

TEST_F(CachePolicyTest, PinsCountAgainstTheTenantsQuota) {
  Make(64ull << 20, 64ull << 20);
  const auto a = Prompt(64, 9);
  Put(1, a);
  const uint64_t ns = BlockStore::TenantNs("t");
  ASSERT_TRUE(store_->SetTenantQuota(ns, {6 * ResidentBytes(), 0, 0}).ok());
  ASSERT_TRUE(store_->PinPrefix("t", layout_->id, a, 10000, true).ok());  // 4 of 6 blocks' worth
  auto refused = store_->PinPrefix("t", layout_->id, a, 10000, true);    // each pin holds its bytes
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store_->GetPolicyStats().pins_active, 1u);
  EXPECT_EQ(store_->GetPolicyStats().tenants[0].pinned_bytes[1], 4 * ResidentBytes());
  // Retention hints hold nothing in place and are not limited by the quota.
  EXPECT_TRUE(store_->PinPrefix("t", layout_->id, a, 10000, false).ok());
}

TEST_F(CachePolicyTest, InvalidatePrefixRemovesItsContinuationsFromEveryTier) {
  Make(64ull << 20, 64ull << 20, 64ull << 20);
  const auto base = Prompt(64, 11);
  auto longer = base;
  for (int i = 0; i < 32; ++i) longer.push_back(7000 + i);
  auto sibling = std::vector<int32_t>(base.begin(), base.begin() + 32);
  for (int i = 0; i < 32; ++i) sibling.push_back(9000 + i);
  Put(1, longer);   // 6 blocks
  Put(1, sibling);  // shares the first 2
  ASSERT_GT(store_->DemoteFromGpu(3).moved, 0);
  ASSERT_GT(store_->DemoteFromHost(1).moved, 0);
  BlockStore::InvalidateScope bad;
  bad.kind = BlockStore::InvalidateScope::Kind::kPrefix;
  bad.layout_id = layout_->id;
  bad.tenant_salt = "t";
  bad.tokens = {1, 2, 3};
  EXPECT_EQ(store_->Invalidate(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.layout_id = 4242;
  bad.tokens = base;
  EXPECT_EQ(store_->Invalidate(bad).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Cached(longer), 6);
  BlockStore::InvalidateScope scope;
  scope.kind = BlockStore::InvalidateScope::Kind::kPrefix;
  scope.layout_id = layout_->id;
  scope.tenant_salt = "t";
  scope.tokens = base;  // blocks 4..6 of `longer` (the 4th block ends `base`) go; the sibling stays
  auto out = store_->Invalidate(scope);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->removed, 3);
  EXPECT_EQ(Cached(longer), 3);
  EXPECT_EQ(Cached(sibling), 4);
  // A block pinned by a live session stays; by layout removes the rest.
  auto hold = store_->Lookup(5, "t", layout_->id, sibling, true, false);
  ASSERT_TRUE(hold.ok());
  BlockStore::InvalidateScope by_layout;
  by_layout.kind = BlockStore::InvalidateScope::Kind::kLayout;
  by_layout.layout_id = layout_->id;
  out = store_->Invalidate(by_layout);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->skipped_pinned, 4);
  EXPECT_EQ(out->removed, 1);
  store_->ReleaseSession(5);
  out = store_->Invalidate(by_layout);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->removed, 4);
  EXPECT_EQ(Cached(sibling), 0);
  for (const auto& t : store_->Stats().tiers) EXPECT_EQ(t.blocks, 0u) << TierName(t.tier);
}

TEST_F(CachePolicyTest, WarmBringsPrefixesUpFromSsd) {
  Make(64ull << 20, 64ull << 20, 64ull << 20);
  const auto a = Prompt(64, 12), b = Prompt(48, 13);
  Put(1, a);
  Put(1, b);
  ASSERT_EQ(store_->DemoteFromGpu(0).moved, 7);
  ASSERT_EQ(store_->DemoteFromHost(0).moved, 7);
  const auto before = store_->Stats();
  auto w = store_->Warm(3, "t", layout_->id, a, Tier::kHost);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->found, 4);
  EXPECT_EQ(w->in_target, 4);
  Tier t = Tier::kGpu;
  EXPECT_EQ(Cached(a, "t", &t), 4);
  EXPECT_EQ(t, Tier::kHost);
  w = store_->Warm(3, "t", layout_->id, b, Tier::kGpu);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->in_target, 3);
  EXPECT_EQ(Cached(b, "t", &t), 3);
  EXPECT_EQ(t, Tier::kGpu);
  EXPECT_EQ(store_->PinnedBy(3), 0);  // warm-up keeps no pins
  const auto after = store_->Stats();
  EXPECT_EQ(after.lookups - before.lookups, 2u);  // only this test's own Cached() lookups count
  EXPECT_EQ(store_->GetPolicyStats().warmed_blocks, 7u);
  EXPECT_EQ(store_->Warm(3, "t", layout_->id, b, Tier::kSsd).status().code(), absl::StatusCode::kInvalidArgument);
}

// A noisy tenant fills the GPU tier; the quiet tenant's blocks inside its quota stay there. Without
// quotas (the control) the same traffic pushes them out.
TEST_F(CachePolicyTest, NoisyTenantCannotPushAQuietTenantOutOfItsQuota) {
  constexpr uint64_t kBlock = 4 * 2 * 2 * 16 * 64 * 2;  // resident fp16 bytes of one block of kShape
  for (bool quotas : {false, true}) {
    Make(64 * kBlock, 256ull << 20);
    ASSERT_EQ(ResidentBytes(), kBlock);
    store_->SetSessionTenant(1, "quiet");
    store_->SetSessionTenant(2, "noisy");
    if (quotas) {
      ASSERT_TRUE(store_->SetTenantQuota(BlockStore::TenantNs("quiet"), {16 * ResidentBytes(), 0, 0}).ok());
      ASSERT_TRUE(store_->SetTenantQuota(BlockStore::TenantNs("noisy"), {48 * ResidentBytes(), 0, 0}).ok());
    }
    const auto quiet = Prompt(16 * 12, 14);
    Put(1, quiet, "quiet");
    for (int i = 0; i < 30; ++i) Put(2, Prompt(16 * 8, 200 + i), "noisy");
    Tier t = Tier::kSsd;
    ASSERT_EQ(Cached(quiet, "quiet", &t), 12);
    int64_t on_gpu = 0;
    auto hit = store_->Lookup(9, "quiet", layout_->id, quiet, false, false);
    ASSERT_TRUE(hit.ok());
    for (const auto& b : hit->blocks) on_gpu += b.tier == Tier::kGpu;
    const auto st = store_->GetPolicyStats();
    uint64_t noisy_gpu = 0;
    for (const auto& u : st.tenants)
      if (u.tenant_ns == BlockStore::TenantNs("noisy")) noisy_gpu = u.used_bytes[1];
    if (quotas) {
      EXPECT_EQ(on_gpu, 12) << "the quiet tenant lost GPU blocks inside its quota";
      EXPECT_LE(noisy_gpu, 48 * ResidentBytes());
      EXPECT_GT(st.quota_evictions[1], 0u);
    } else {
      EXPECT_LT(on_gpu, 12) << "control: without quotas the noisy tenant should push the quiet one out";
    }
  }
}

TEST_F(CachePolicyTest, QuotaAllocationAndRuntimeChangeDrain) {
  Make(64ull << 20, 64ull << 20);
  store_->SetSessionTenant(1, "t");
  const uint64_t ns = BlockStore::TenantNs("t");
  EXPECT_EQ(store_->SetTenantQuota(ns, {0, 0, 1 << 20}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->SetTenantQuota(0, {1, 1, 0}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store_->SetTenantQuota(ns, {4 * ResidentBytes(), 0, 0}).ok());
  // Private blocks count: five at once cannot fit, four can.
  EXPECT_EQ(store_->Allocate(1, layout_->id, 5).status().code(), absl::StatusCode::kResourceExhausted);
  auto four = store_->Allocate(1, layout_->id, 4);
  ASSERT_TRUE(four.ok());
  store_->ReleaseSession(1);
  store_->SetSessionTenant(1, "t");
  ASSERT_TRUE(store_->SetTenantQuota(ns, {}).ok());
  Put(1, Prompt(16 * 10, 15));
  // Lowering the quota drains in the background (the mover), down to the new quota.
  ASSERT_TRUE(store_->SetTenantQuota(ns, {3 * ResidentBytes(), 0, 0}).ok());
  for (int i = 0; i < 50; ++i) {
    const auto st = store_->GetPolicyStats();
    if (!st.tenants.empty() && st.tenants[0].used_bytes[1] <= 3 * ResidentBytes()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto st = store_->GetPolicyStats();
  ASSERT_EQ(st.tenants.size(), 1u);
  EXPECT_EQ(st.tenants[0].used_bytes[1], 3 * ResidentBytes());
  EXPECT_EQ(st.tenants[0].quota_bytes[1], 3 * ResidentBytes());
  EXPECT_EQ(Cached(Prompt(16 * 10, 15)), 10);  // demoted, not lost
}

TEST(EvictionPolicyTest, UnknownNameIsRejected) {
  EXPECT_EQ(MakeEvictionPolicy("mru").status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* n : {"lru", "slru", "arc", "cost"}) {
    auto p = MakeEvictionPolicy(n);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ((*p)->name(), n);
  }
}

// One hot block used twice, then a scan of one-shot blocks: LRU evicts the hot block first once it is
// the oldest; SLRU and ARC keep it behind the one-shot blocks.
TEST(EvictionPolicyTest, ScanResistantPoliciesKeepTheHotBlock) {
  for (const char* name : {"lru", "slru", "arc"}) {
    auto p = MakeEvictionPolicy(name);
    ASSERT_TRUE(p.ok());
    (*p)->OnInsert({1, BlockKey{1, 1}, 100, 1});
    (*p)->OnAccess(1);
    std::vector<EvictionCandidate> c{{1, true, 1, 0}};
    for (uint64_t id = 2; id < 10; ++id) {
      (*p)->OnInsert({id, BlockKey{id, id}, 100, 1});
      c.push_back({id, true, 1, 0});
    }
    (*p)->Rank(c, 1);
    if (std::string(name) == "lru") {
      EXPECT_EQ(c[0].id, 1u) << name;
    } else {
      EXPECT_NE(c[0].id, 1u) << name;
    }
  }
}

TEST(EvictionPolicyTest, CostPolicyKeepsExpensiveSmallBlocksLonger) {
  auto p = MakeEvictionPolicy("cost");
  ASSERT_TRUE(p.ok());
  (*p)->OnInsert({1, BlockKey{1, 1}, 1000, 10});  // deep in a long prompt: 10x the prefill to rebuild
  (*p)->OnInsert({2, BlockKey{2, 2}, 1000, 1});
  std::vector<EvictionCandidate> c{{1, true, 1, 0}, {2, true, 1, 0}};
  (*p)->Rank(c, 1);
  EXPECT_EQ(c[0].id, 2u);
  // Quota class and leaves come before any policy order.
  std::vector<EvictionCandidate> d{{1, true, 1, 0}, {2, false, 0, 0}, {3, true, 2, 0}};
  (*p)->Rank(d, 3);
  EXPECT_EQ(d[0].id, 2u);
  EXPECT_EQ(d[2].id, 3u);
}

TEST_F(CachePolicyTest, SsdAdmissionWritesOnlyReusedOrSharedBlocks) {
  CachePolicyOptions p;
  p.ssd.admission_min_uses = 2;
  Make(64ull << 20, 64ull << 20, 64ull << 20, p);
  const auto once = Prompt(32, 16), twice = Prompt(32, 17);
  Put(1, once);
  Put(1, twice);
  ASSERT_EQ(Cached(twice), 2);  // a lookup hit: second use
  ASSERT_EQ(store_->DemoteFromGpu(0).moved, 4);
  const auto o = store_->DemoteFromHost(0);
  EXPECT_EQ(o.moved, 2);
  EXPECT_EQ(o.dropped, 2);
  const auto st = store_->GetPolicyStats();
  EXPECT_EQ(st.admission_rejections[3], 2u);
  EXPECT_EQ(st.removed_by_reason[static_cast<int>(RemoveReason::kAdmission)], 2u);
  EXPECT_EQ(Cached(twice), 2);
  EXPECT_EQ(Cached(once), 0);
}

// Events, pins, quotas and moves from many threads at once (run under TSan: label tsan).
TEST_F(CachePolicyTest, ConcurrentTrafficWithEventReadersPinsAndQuotas) {
  CachePolicyOptions p;
  p.event_buffer = 256;
  p.gpu.eviction = "arc";
  p.host.eviction = "slru";
  Make(48 * 32768ull, 64ull << 20, 64ull << 20, p);
  ASSERT_EQ(ResidentBytes(), 32768u);
  ASSERT_TRUE(store_->SetTenantQuota(BlockStore::TenantNs("t"), {32 * ResidentBytes(), 0, 0}).ok());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> seen{0}, lost{0};
  std::thread reader([&] {
    uint64_t cursor = store_->events().next_seq();
    while (!stop) {
      auto r = store_->events().Read(cursor, 64, nullptr, std::chrono::milliseconds(20));
      seen += r.events.size();
      lost += r.lost;
      cursor = r.next;
    }
  });
  std::thread pinner([&] {
    for (int i = 0; i < 20; ++i) {
      auto pin = store_->PinPrefix("t", layout_->id, testing::ScenarioPrompt(32, i % 8), 5, i % 2 == 0);
      store_->RunPolicyMaintenance();
      (void)store_->TakeSnapshot(0);
      (void)store_->GetPolicyStats();
      (void)pin;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  const auto out = testing::RunConcurrentSessions(*store_, *layout_, 3, 15, /*demote_host=*/true);
  pinner.join();
  stop = true;
  reader.join();
  EXPECT_EQ(out.failures, 0) << out.first_failure;
  EXPECT_GT(seen.load() + lost.load(), 0u);
}

}  // namespace
}  // namespace kvtier
