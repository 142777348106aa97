// Flush, Drain and Prefetch through the real gRPC server (in-process), with self-verifying KV content:
// what an operator or an engine gets back is checked against the oracle, and bad input changes nothing.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "client/client.h"
#include "client/prompt_kv.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "kernels/testing/kv_oracle.h"
#include "tests/daemon/daemon_test_util.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

using testing::SmallLayout;

constexpr float kInt8Tolerance = 0.5f / 127.0f + 2e-3f;  // an int8 round trip (as the demo worker checks)

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTestDir("kvtier-admin-");
    config_ = DefaultConfig();
    config_.set_socket_path((dir_ / "k.sock").string());
    config_.mutable_limits()->set_gpu_pool_bytes(64ull << 20);
    config_.mutable_limits()->set_host_tier_bytes(64ull << 20);
    config_.set_ssd_dir((dir_ / "ssd").string());
    config_.mutable_limits()->set_ssd_tier_bytes(64ull << 20);
    config_.set_admin_token("admin-secret");
    for (const char* name : {"alpha", "beta"}) {
      auto* t = config_.add_tenants();
      t->set_name(name);
      t->set_token(std::string(name) + "-token");
    }
  }
  void Start() {
    auto s = KvTierServer::Start(config_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<Client> Connect(const std::string& tenant, const std::string& token) {
    return testing::ConnectAs(config_.socket_path(), tenant, token);
  }
  std::unique_ptr<Client> Admin() { return Connect("alpha", "admin-secret"); }

  static std::vector<int32_t> Prompt(int tokens, int32_t base) {
    std::vector<int32_t> p(tokens);
    for (int i = 0; i < tokens; ++i) p[i] = base + i;
    return p;
  }
  // Writes a prompt's KV (oracle content) and drops the writer's pins, keeping the private tail.
  WrittenPrompt Write(Client& c, uint64_t layout_id, uint64_t page_bytes, const std::vector<int32_t>& prompt) {
    auto w = WritePromptKv(c, layout_id, kShape, page_bytes, prompt, [&](int b, uint8_t* page) {
      testing::FillActivationPage(Geometry(), Format::kFp16, testing::BlockSeed(prompt, 16, b), page);
    });
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return {};
    EXPECT_TRUE(c.Release(w->block_ids).ok());
    return *w;
  }
  // Reads the prompt's cached prefix back (promoting it) and counts values off the oracle.
  int64_t BadValues(Client& c, uint64_t layout_id, uint64_t page_bytes, const std::vector<int32_t>& prompt,
                    int expect_blocks) {
    auto r = ReadPrefixKv(c, layout_id, page_bytes, prompt);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return -1;
    EXPECT_EQ(r->lookup.blocks_size(), expect_blocks);
    int64_t bad = 0;
    for (size_t b = 0; b < r->pages.size(); ++b)
      bad += testing::CheckActivationPage(Geometry(), Format::kFp16,
                                          testing::BlockSeed(prompt, 16, static_cast<int>(b)),
                                          reinterpret_cast<const uint8_t*>(r->pages[b].data()), kInt8Tolerance)
                 .bad_values;
    std::vector<uint64_t> ids;
    for (const auto& b : r->lookup.blocks()) ids.push_back(b.block_id());
    EXPECT_TRUE(c.Release(ids).ok());
    return bad;
  }
  static const PageGeometry& Geometry() {
    static const PageGeometry g = *PageGeometry::Uniform(kShape, DefaultCodec(Format::kFp16, Operand::kKey),
                                                         DefaultCodec(Format::kFp16, Operand::kValue));
    return g;
  }
  static uint64_t TierBlocks(const v1::StatsResponse& s, v1::Tier t) {
    for (const auto& x : s.tiers())
      if (x.tier() == t) return x.blocks();
    return 0;
  }

  static constexpr LayoutShape kShape{2, 2, 64, 16};
  std::filesystem::path dir_;
  v1::DaemonConfig config_;
  std::unique_ptr<KvTierServer> server_;
};

// Flushed blocks survive a restart (and come back exact to the int8 bound); blocks that were not
// flushed are gone with the memory tiers. Flushing twice writes nothing new; the blocks stay on the GPU;
// a flushed block demoted to SSD is served from its flush copy.
TEST_F(AdminTest, FlushMakesCommittedBlocksDurable) {
  Start();
  const auto flushed = Prompt(5 * 16 + 3, 1000), not_flushed = Prompt(3 * 16, 5000);
  uint64_t layout = 0, page_bytes = 0;
  {
    auto c = Connect("alpha", "alpha-token");
    auto reg = c->RegisterLayout(SmallLayout());
    ASSERT_TRUE(reg.ok());
    layout = reg->layout_id();
    page_bytes = reg->activation_page_bytes();
    Write(*c, layout, page_bytes, flushed);
    auto admin = Admin();
    auto f = admin->Flush();
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->blocks_written(), 5);
    EXPECT_EQ(f->blocks_not_written(), 0);
    EXPECT_TRUE(f->durable());
    f = admin->Flush(v1::TIER_SSD);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->blocks_written(), 0);
    EXPECT_EQ(f->blocks_already_copied(), 5);
    auto s = admin->Stats();
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(TierBlocks(*s, v1::TIER_GPU), 6u);  // 5 committed + the private tail: nothing moved
    EXPECT_EQ(s->page_outs(), 0u);
    const uint64_t ssd_used = s->tiers(2).used_bytes();
    EXPECT_GT(ssd_used, 0u);
    // Demoted all the way down, the blocks need no second record: the SSD holds what it held.
    ASSERT_EQ(admin->Evict(v1::TIER_GPU, 0)->blocks_moved(), 5);
    ASSERT_EQ(admin->Evict(v1::TIER_HOST, 0)->blocks_moved(), 5);
    s = admin->Stats();
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(TierBlocks(*s, v1::TIER_SSD), 5u);
    EXPECT_EQ(s->tiers(2).used_bytes(), ssd_used);
    // Served from the flush copies (end-to-end checksum verified on the way up).
    EXPECT_EQ(BadValues(*c, layout, page_bytes, flushed, 5), 0);
    EXPECT_EQ(admin->Stats()->checksum_failures(), 0u);
    // Promotion took them off the SSD tier: flush again, then add a prompt that is never flushed.
    f = admin->Flush();
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->blocks_written(), 5);
    Write(*c, layout, page_bytes, not_flushed);
  }
  // Restart on the same SSD directory: only the flushed prefix is there.
  server_.reset();
  Start();
  auto c = Connect("alpha", "alpha-token");
  ASSERT_TRUE(c->RegisterLayout(SmallLayout()).ok());
  auto s = c->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->ssd_restored(), 5u);
  EXPECT_EQ(BadValues(*c, layout, page_bytes, flushed, 5), 0);
  auto miss = c->Lookup(layout, not_flushed, false, false);
  ASSERT_TRUE(miss.ok());
  EXPECT_EQ(miss->blocks_size(), 0);
}

// A flushed block whose host record goes bad is not lost: the bad record is dropped (never served) and
// the block is served from its SSD copy.
TEST_F(AdminTest, AFlushedBlockOutlivesACorruptHostRecord) {
  Start();
  auto c = Connect("alpha", "alpha-token");
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  const auto prompt = Prompt(3 * 16, 808);
  const WrittenPrompt w = Write(*c, reg->layout_id(), reg->activation_page_bytes(), prompt);
  auto admin = Admin();
  ASSERT_EQ(admin->Flush()->blocks_written(), 3);
  ASSERT_EQ(admin->Evict(v1::TIER_GPU, 0)->blocks_moved(), 3);
  ASSERT_TRUE(server_->store().CorruptHostRecordForTest(w.block_ids[1]));
  auto first = ReadPrefixKv(*c, reg->layout_id(), reg->activation_page_bytes(), prompt);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->lookup.blocks_size(), 1);  // the prefix stops before the bad record
  std::vector<uint64_t> ids{first->lookup.blocks(0).block_id()};
  ASSERT_TRUE(c->Release(ids).ok());
  auto s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->checksum_failures(), 1u);
  EXPECT_EQ(s->blocks_dropped(), 0u);
  EXPECT_EQ(TierBlocks(*s, v1::TIER_SSD), 1u);
  EXPECT_EQ(BadValues(*c, reg->layout_id(), reg->activation_page_bytes(), prompt, 3), 0);
}

TEST_F(AdminTest, FlushToHostNeverEvictsAndReportsWhatDidNotFit) {
  Start();
  auto c = Connect("alpha", "alpha-token");
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  const auto prompt = Prompt(6 * 16, 1);
  Write(*c, reg->layout_id(), reg->activation_page_bytes(), prompt);
  auto admin = Admin();
  v1::TierLimits limits;
  limits.set_host_tier_bytes(2 * reg->offload_page_bytes() + 64);  // room for two records only
  ASSERT_TRUE(admin->SetTierLimits(limits).ok());
  auto f = admin->Flush(v1::TIER_HOST);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->blocks_written(), 2);
  EXPECT_EQ(f->blocks_not_written(), 4);
  EXPECT_FALSE(f->durable());
  auto s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->blocks_dropped(), 0u);
  EXPECT_EQ(TierBlocks(*s, v1::TIER_GPU), 6u);
  // The two copies make their page-outs free: no conversion, same bytes.
  EXPECT_EQ(BadValues(*c, reg->layout_id(), reg->activation_page_bytes(), prompt, 6), 0);
}

TEST_F(AdminTest, DrainEmptiesTheGpuTierWithoutDroppingAndWaitsForPins) {
  Start();
  auto c = Connect("alpha", "alpha-token");
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  const auto prompt = Prompt(8 * 16 + 5, 300);
  const WrittenPrompt w = Write(*c, reg->layout_id(), reg->activation_page_bytes(), prompt);
  // Host room for 3 records: the rest of the drain has to go on to SSD (never dropped).
  auto admin = Admin();
  v1::TierLimits limits;
  limits.set_host_tier_bytes(3 * reg->offload_page_bytes() + 64);
  ASSERT_TRUE(admin->SetTierLimits(limits).ok());
  // A reader pins the first two blocks; the drain waits for them.
  auto reader = Connect("alpha", "alpha-token");
  auto hit = reader->Lookup(reg->layout_id(), std::vector<int32_t>(prompt.begin(), prompt.begin() + 32), true, false);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks_size(), 2);
  auto d = admin->Drain(v1::TIER_GPU, 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->blocks_moved(), 6);
  EXPECT_EQ(d->blocks_remaining(), 3);  // 2 pinned + the private tail
  EXPECT_EQ(d->blocks_pinned(), 2);
  EXPECT_EQ(d->blocks_private(), 1);
  EXPECT_FALSE(d->drained());
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::vector<uint64_t> ids;
    for (const auto& b : hit->blocks()) ids.push_back(b.block_id());
    EXPECT_TRUE(reader->Release(ids).ok());
    std::vector<uint64_t> tail{w.tail_block_id};
    EXPECT_TRUE(c->Release(tail).ok());
  });
  d = admin->Drain(v1::TIER_GPU, 10000);
  release.join();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->blocks_moved(), 2);
  EXPECT_TRUE(d->drained());
  auto s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(TierBlocks(*s, v1::TIER_GPU), 0u);
  EXPECT_EQ(s->blocks_dropped(), 0u);
  EXPECT_EQ(TierBlocks(*s, v1::TIER_HOST) + TierBlocks(*s, v1::TIER_SSD), 8u);
  // Then the host tier into SSD.
  d = admin->Drain(v1::TIER_HOST, 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->drained());
  s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(TierBlocks(*s, v1::TIER_SSD), 8u);
  EXPECT_EQ(s->blocks_dropped(), 0u);
  EXPECT_EQ(BadValues(*c, reg->layout_id(), reg->activation_page_bytes(), prompt, 8), 0);
}

TEST_F(AdminTest, DrainWithNoRoomBelowKeepsTheBlocks) {
  config_.clear_ssd_dir();
  config_.mutable_limits()->set_ssd_tier_bytes(0);
  Start();
  auto c = Connect("alpha", "alpha-token");
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  const auto prompt = Prompt(5 * 16, 77);
  Write(*c, reg->layout_id(), reg->activation_page_bytes(), prompt);
  auto admin = Admin();
  v1::TierLimits limits;
  limits.set_host_tier_bytes(2 * reg->offload_page_bytes() + 64);
  ASSERT_TRUE(admin->SetTierLimits(limits).ok());
  auto d = admin->Drain(v1::TIER_GPU, 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->blocks_moved(), 2);
  EXPECT_EQ(d->blocks_remaining(), 3);
  EXPECT_EQ(d->blocks_pinned(), 0);
  EXPECT_FALSE(d->drained());
  auto s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->blocks_dropped(), 0u);  // Evict would have dropped them
  EXPECT_EQ(BadValues(*c, reg->layout_id(), reg->activation_page_bytes(), prompt, 5), 0);
  // No tier below the host tier, nothing durable to flush to.
  EXPECT_EQ(admin->Drain(v1::TIER_HOST, 0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(admin->Flush(v1::TIER_SSD).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(AdminTest, FlushAndDrainRefuseBadInput) {
  Start();
  auto tenant = Connect("alpha", "alpha-token");
  EXPECT_EQ(tenant->Flush().status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(tenant->Drain(v1::TIER_GPU).status().code(), absl::StatusCode::kPermissionDenied);
  auto admin = Admin();
  EXPECT_EQ(admin->Flush(v1::TIER_GPU).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(admin->Flush(static_cast<v1::Tier>(42)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(admin->Drain(v1::TIER_SSD).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(admin->Drain(v1::TIER_UNSPECIFIED).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(admin->Drain(v1::TIER_GPU, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(admin->Drain(v1::TIER_GPU, 1ll << 40).status().code(), absl::StatusCode::kInvalidArgument);
}

// Prefetch by tokens (pinned) and by keys (unpinned): the prefix comes up to the GPU tier in the
// background and reads back exact to the int8 bound.
TEST_F(AdminTest, PrefetchPagesAPrefixUpAhead) {
  Start();
  auto c = Connect("alpha", "alpha-token");
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  const auto prompt = Prompt(40 * 16 + 7, 9000);
  const WrittenPrompt w = Write(*c, reg->layout_id(), reg->activation_page_bytes(), prompt);
  ASSERT_EQ(w.keys.size(), 40u);
  auto admin = Admin();
  ASSERT_EQ(admin->Evict(v1::TIER_GPU, 0)->blocks_moved(), 40);

  auto p = c->Prefetch(reg->layout_id(), {}, prompt, /*pin=*/true);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->blocks_requested(), 40);
  auto g = c->GetPrefetch(p->prefetch_id(), 0);  // progress at once, whatever the state
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_LE(g->blocks_ready(), 40);
  g = c->GetPrefetch(p->prefetch_id(), 20000);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->state(), v1::PREFETCH_STATE_DONE);
  EXPECT_EQ(g->blocks_ready(), 40);
  EXPECT_EQ(g->prefix_end(), 40);
  ASSERT_EQ(g->blocks_size(), 40);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(g->blocks(i).tier(), v1::TIER_GPU);
    EXPECT_EQ(g->blocks(i).key(), w.keys[i]);
    ids.push_back(g->blocks(i).block_id());
  }
  // Pinned: they stay through an eviction, and the session can read them without a Lookup.
  EXPECT_EQ(admin->Evict(v1::TIER_GPU, 0)->blocks_moved(), 0);
  auto pages = c->ReadBlocks(std::span<const uint64_t>(ids).first(8));
  ASSERT_TRUE(pages.ok()) << pages.status();
  for (int b = 0; b < 8; ++b)
    EXPECT_EQ(testing::CheckActivationPage(Geometry(), Format::kFp16, testing::BlockSeed(prompt, 16, b),
                                           reinterpret_cast<const uint8_t*>((*pages)[b].data()), kInt8Tolerance)
                  .bad_values,
              0);
  ASSERT_TRUE(c->Release(ids).ok());

  // By keys, unpinned: promoted, then evictable again.
  ASSERT_EQ(admin->Evict(v1::TIER_GPU, 0)->blocks_moved(), 40);
  p = c->Prefetch(reg->layout_id(), w.keys, {}, /*pin=*/false);
  ASSERT_TRUE(p.ok()) << p.status();
  g = c->GetPrefetch(p->prefetch_id(), 20000);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->state(), v1::PREFETCH_STATE_DONE);
  EXPECT_EQ(g->blocks_ready(), 40);
  auto s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->pinned_blocks(), 0u);
  EXPECT_EQ(TierBlocks(*s, v1::TIER_GPU), 41u);  // and the private tail
}

TEST_F(AdminTest, PrefetchStopsAtTheFirstUnknownOrForeignBlock) {
  Start();
  auto a = Connect("alpha", "alpha-token");
  auto b = Connect("beta", "beta-token");
  auto reg = a->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(b->RegisterLayout(SmallLayout()).ok());
  const auto prompt = Prompt(4 * 16, 4242);
  const WrittenPrompt w = Write(*a, reg->layout_id(), reg->activation_page_bytes(), prompt);
  std::vector<std::string> keys = w.keys;
  keys[2] = std::string(16, '\x7f');  // nobody's block
  auto p = a->Prefetch(reg->layout_id(), keys, {}, true);
  ASSERT_TRUE(p.ok());
  auto g = a->GetPrefetch(p->prefetch_id(), 20000);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->state(), v1::PREFETCH_STATE_DONE);
  EXPECT_EQ(g->blocks_ready(), 2);
  EXPECT_EQ(g->prefix_end(), 2);
  // Beta names alpha's keys: as if they did not exist; and cannot read alpha's prefetch.
  auto pb = b->Prefetch(reg->layout_id(), w.keys, {}, true);
  ASSERT_TRUE(pb.ok());
  auto gb = b->GetPrefetch(pb->prefetch_id(), 20000);
  ASSERT_TRUE(gb.ok());
  EXPECT_EQ(gb->blocks_ready(), 0);
  EXPECT_EQ(gb->blocks_size(), 0);
  EXPECT_EQ(b->GetPrefetch(p->prefetch_id(), 0).status().code(), absl::StatusCode::kNotFound);
  auto s = a->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->pinned_blocks(), 2u);  // only alpha's two
}

TEST_F(AdminTest, PrefetchRefusesBadInputAndReleasesWithTheSession) {
  Start();
  auto c = Connect("alpha", "alpha-token");
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  const auto prompt = Prompt(3 * 16, 55);
  const WrittenPrompt w = Write(*c, reg->layout_id(), reg->activation_page_bytes(), prompt);
  const uint64_t l = reg->layout_id();
  std::vector<std::string> short_key{std::string(15, 'k')};
  EXPECT_EQ(c->Prefetch(l, short_key, {}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Prefetch(l, w.keys, prompt, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Prefetch(l + 1, w.keys, {}, true).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->Prefetch(l, {}, std::vector<int32_t>(15, 1), true).status().code(),
            absl::StatusCode::kInvalidArgument);  // no full block
  EXPECT_EQ(c->Prefetch(l, {}, {}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->GetPrefetch(12345, 0).status().code(), absl::StatusCode::kNotFound);
  auto p = c->Prefetch(l, w.keys, {}, true);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(c->GetPrefetch(p->prefetch_id(), -5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->GetPrefetch(p->prefetch_id(), 3600000).status().code(), absl::StatusCode::kInvalidArgument);
  auto g = c->GetPrefetch(p->prefetch_id(), 20000);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->blocks_ready(), 3);
  auto admin = Admin();
  auto s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->pinned_blocks(), 3u);
  c.reset();  // the session ends: its prefetch pins go with it
  uint64_t pinned = 1;
  for (int i = 0; i < 300 && pinned != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    pinned = admin->Stats()->pinned_blocks();
  }
  EXPECT_EQ(pinned, 0u);
}

}  // namespace
}  // namespace kvtier
