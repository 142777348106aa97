// The cache-policy RPCs against the real in-process server: per-tenant event streams and snapshots,
// tier-aware lookups, pins, invalidation, warm-up, quotas, policy stats, and kvtierctl's warm command.
// Bad input gets a clear status and changes nothing.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/prompt_kv.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "kernels/testing/kv_oracle.h"
#include "tests/daemon/daemon_test_util.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

class PolicyServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTestDir("kvtier-pol-");
    config_ = DefaultConfig();
    config_.set_socket_path((dir_ / "k.sock").string());
    config_.mutable_limits()->set_gpu_pool_bytes(64ull << 20);
    config_.mutable_limits()->set_host_tier_bytes(64ull << 20);
    config_.mutable_limits()->set_ssd_tier_bytes(64ull << 20);
    config_.set_ssd_dir((dir_ / "ssd").string());
    config_.set_admin_token("admin-secret");
    config_.mutable_cache_policy()->mutable_gpu()->set_eviction("slru");
    for (const char* name : {"alpha", "beta"}) {
      auto* t = config_.add_tenants();
      t->set_name(name);
      t->set_token(absl::StrCat(name, "-token"));
    }
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
  // Registers the small layout and writes + commits every full block of `prompt`; returns the layout id.
  uint64_t Publish(Client& c, const std::vector<int32_t>& prompt) {
    auto reg = c.RegisterLayout(testing::SmallLayout());
    EXPECT_TRUE(reg.ok()) << reg.status();
    if (!reg.ok()) return 0;
    const LayoutShape shape{2, 2, 64, 16};
    auto geometry = PageGeometry::Uniform(shape, DefaultCodec(Format::kFp16, Operand::kKey),
                                          DefaultCodec(Format::kFp16, Operand::kValue));
    EXPECT_TRUE(geometry.ok());
    auto fill = [&](int b, uint8_t* page) {
      testing::FillActivationPage(*geometry, Format::kFp16, testing::BlockSeed(prompt, 16, b), page);
    };
    auto w = WritePromptKv(c, reg->layout_id(), shape, reg->activation_page_bytes(), prompt, fill);
    EXPECT_TRUE(w.ok()) << w.status();
    if (w.ok()) {
      EXPECT_TRUE(c.Release(w->block_ids).ok());
    }
    return reg->layout_id();
  }
  static std::vector<int32_t> Tokens(int n, int base) {
    std::vector<int32_t> t(n);
    for (int i = 0; i < n; ++i) t[i] = base + i;
    return t;
  }
  // Reads event batches until `want` events arrived (or the stream ends).
  static std::vector<v1::KvEvent> ReadEvents(grpc::ClientReader<v1::KvEventBatch>& r, size_t want,
                                             uint64_t* expect_from) {
    std::vector<v1::KvEvent> out;
    v1::KvEventBatch b;
    while (out.size() < want && r.Read(&b)) {
      EXPECT_EQ(b.lost(), 0u);
      if (*expect_from != 0) {
        EXPECT_EQ(b.from_seq(), *expect_from);  // no gap
      }
      *expect_from = b.next_seq();
      for (const auto& e : b.events()) out.push_back(e);
    }
    return out;
  }
  v1::PolicyStatsResponse PolicyStats(Client& c) {
    grpc::ClientContext ctx;
    v1::PolicyStatsRequest req;
    req.set_session_id(c.session_id());
    v1::PolicyStatsResponse r;
    EXPECT_TRUE(c.stub().PolicyStats(&ctx, req, &r).ok());
    return r;
  }

  std::filesystem::path dir_;
  v1::DaemonConfig config_;
  std::unique_ptr<KvTierServer> server_;
};

TEST_F(PolicyServiceTest, EventStreamsShowATenantItsOwnBlocksAndAnAdminAll) {
  auto alpha = Connect("alpha", "alpha-token");
  auto beta = Connect("beta", "beta-token");
  auto admin = Connect("alpha", "admin-secret");
  ASSERT_TRUE(alpha && beta && admin);
  // Bad input: another tenant's events, a bad batch size.
  for (auto [tenant, batch] : {std::pair<std::string, int>{"beta", 0}, {"", -1}, {"", 5000}}) {
    grpc::ClientContext ctx;
    v1::StreamKvEventsRequest req;
    req.set_session_id(alpha->session_id());
    req.set_tenant(tenant);
    req.set_max_batch(batch);
    auto r = alpha->stub().StreamKvEvents(&ctx, req);
    v1::KvEventBatch b;
    EXPECT_FALSE(r->Read(&b));
    EXPECT_EQ(r->Finish().error_code(), tenant.empty() ? grpc::StatusCode::INVALID_ARGUMENT
                                                       : grpc::StatusCode::PERMISSION_DENIED);
  }
  grpc::ClientContext actx, dctx;
  v1::StreamKvEventsRequest areq, dreq;
  areq.set_session_id(alpha->session_id());
  dreq.set_session_id(admin->session_id());
  auto astream = alpha->stub().StreamKvEvents(&actx, areq);
  auto dstream = admin->stub().StreamKvEvents(&dctx, dreq);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // both streams are open before the traffic
  const auto beta_prompt = Tokens(32, 1000), alpha_prompt = Tokens(48, 2000);
  Publish(*beta, beta_prompt);
  const uint64_t layout = Publish(*alpha, alpha_prompt);
  uint64_t from = 0;
  auto seen = ReadEvents(*astream, 3, &from);
  ASSERT_EQ(seen.size(), 3u);
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].tenant(), "alpha");
    EXPECT_EQ(seen[i].type(), v1::KV_EVENT_STORED);
    EXPECT_EQ(seen[i].tier(), v1::TIER_GPU);
    EXPECT_EQ(seen[i].layout_id(), layout);
    EXPECT_EQ(seen[i].key().size(), 16u);
    EXPECT_EQ(seen[i].format(), "fp16");
    EXPECT_EQ(seen[i].tokens_size(), 16);
    EXPECT_EQ(seen[i].tokens(0), 2000 + 16 * static_cast<int>(i));
    if (i > 0) {
      EXPECT_EQ(seen[i].parent_key(), seen[i - 1].key());
    }
  }
  uint64_t dfrom = 0;
  auto all = ReadEvents(*dstream, 5, &dfrom);
  ASSERT_EQ(all.size(), 5u);
  EXPECT_EQ(all[0].tenant(), "beta");
  EXPECT_EQ(all[4].tenant(), "alpha");
  for (size_t i = 1; i < all.size(); ++i) EXPECT_EQ(all[i].seq(), all[i - 1].seq() + 1);
  // A page-out comes as moves; the snapshot agrees with what the events said.
  auto ev = admin->Evict(v1::TIER_GPU, 0);
  ASSERT_TRUE(ev.ok());
  auto moved = ReadEvents(*astream, 3, &from);
  ASSERT_EQ(moved.size(), 3u);
  for (const auto& e : moved) {
    EXPECT_EQ(e.type(), v1::KV_EVENT_MOVED);
    EXPECT_EQ(e.from_tier(), v1::TIER_GPU);
    EXPECT_EQ(e.tier(), v1::TIER_HOST);
    EXPECT_EQ(e.format(), "int8");
  }
  grpc::ClientContext sctx;
  v1::KvSnapshotRequest sreq;
  sreq.set_session_id(alpha->session_id());
  v1::KvSnapshotResponse snap;
  ASSERT_TRUE(alpha->stub().KvSnapshot(&sctx, sreq, &snap).ok());
  ASSERT_EQ(snap.blocks_size(), 3);  // alpha's only
  for (const auto& b : snap.blocks()) {
    EXPECT_EQ(b.tenant(), "alpha");
    EXPECT_EQ(b.tier(), v1::TIER_HOST);
  }
  EXPECT_EQ(snap.next_seq(), from);
  grpc::ClientContext s2;
  sreq.set_tenant("beta");
  EXPECT_EQ(alpha->stub().KvSnapshot(&s2, sreq, &snap).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // The lookup says where each block is and how long it takes to bring it up.
  auto hit = alpha->Lookup(layout, alpha_prompt, false, false);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks_size(), 3);
  double sum = 0;
  for (const auto& b : hit->blocks()) {
    EXPECT_EQ(b.tier(), v1::TIER_HOST);
    EXPECT_GT(b.eta_seconds(), 0);
    sum += b.eta_seconds();
  }
  EXPECT_DOUBLE_EQ(hit->eta_seconds(), sum);
  // Stats: hits per tier, the lag of the two live streams, alpha sees only itself.
  const auto st = PolicyStats(*admin);
  EXPECT_EQ(st.event_consumers_size(), 2);
  EXPECT_EQ(st.tiers(1).tier(), v1::TIER_HOST);
  EXPECT_EQ(st.tiers(1).lookup_hits(), 3u);
  EXPECT_EQ(st.tiers(0).eviction_policy(), "slru");
  EXPECT_EQ(PolicyStats(*alpha).tenants_size(), 1);
  EXPECT_EQ(PolicyStats(*alpha).event_consumers_size(), 0);
  actx.TryCancel();
  dctx.TryCancel();
  (void)astream->Finish();
  (void)dstream->Finish();
}

TEST_F(PolicyServiceTest, PinsInvalidationAndQuotasCheckTheirInput) {
  auto alpha = Connect("alpha", "alpha-token");
  auto beta = Connect("beta", "beta-token");
  auto admin = Connect("alpha", "admin-secret");
  ASSERT_TRUE(alpha && beta && admin);
  const auto prompt = Tokens(64, 3000);
  const uint64_t layout = Publish(*alpha, prompt);
  auto pin = [&](Client& c, int64_t ttl, v1::PinMode mode, v1::PinPrefixResponse* out) {
    grpc::ClientContext ctx;
    v1::PinPrefixRequest req;
    req.set_session_id(c.session_id());
    req.set_layout_id(layout);
    for (int32_t t : prompt) req.add_tokens(t);
    req.set_ttl_ms(ttl);
    req.set_mode(mode);
    return c.stub().PinPrefix(&ctx, req, out).error_code();
  };
  v1::PinPrefixResponse p;
  EXPECT_EQ(pin(*alpha, -1, v1::PIN_MODE_HARD, &p), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(pin(*alpha, 1000, static_cast<v1::PinMode>(9), &p), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(pin(*beta, 1000, v1::PIN_MODE_HARD, &p), grpc::StatusCode::NOT_FOUND);  // beta's namespace is empty
  EXPECT_EQ(PolicyStats(*admin).pins_active(), 0u);
  ASSERT_EQ(pin(*alpha, 60000, v1::PIN_MODE_HARD, &p), grpc::StatusCode::OK);
  EXPECT_EQ(p.blocks(), 4);
  {
    grpc::ClientContext ctx;
    v1::ReleasePinRequest req;
    req.set_session_id(beta->session_id());
    req.set_pin_id(p.pin_id());
    v1::ReleasePinResponse r;
    EXPECT_EQ(beta->stub().ReleasePin(&ctx, req, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  auto ev = admin->Evict(v1::TIER_GPU, 0);
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->blocks_moved(), 0);  // hard-pinned
  // Invalidation: scope checks, then alpha's own prefix (the pin on it ends with it).
  auto invalidate = [&](Client& c, v1::InvalidateRequest req, v1::InvalidateResponse* out) {
    grpc::ClientContext ctx;
    req.set_session_id(c.session_id());
    return c.stub().Invalidate(&ctx, req, out).error_code();
  };
  v1::InvalidateRequest req;
  v1::InvalidateResponse out;
  EXPECT_EQ(invalidate(*alpha, req, &out), grpc::StatusCode::INVALID_ARGUMENT);
  req.set_tenant("alpha");
  EXPECT_EQ(invalidate(*beta, req, &out), grpc::StatusCode::PERMISSION_DENIED);
  req.set_layout_id(layout);
  EXPECT_EQ(invalidate(*alpha, req, &out), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(invalidate(*beta, req, &out), grpc::StatusCode::PERMISSION_DENIED);
  req.mutable_prefix()->set_layout_id(layout);
  for (int i = 0; i < 32; ++i) req.mutable_prefix()->add_tokens(prompt[i]);
  ASSERT_EQ(invalidate(*beta, req, &out), grpc::StatusCode::OK);  // beta's namespace: nothing of alpha's
  EXPECT_EQ(out.blocks_removed(), 0);
  EXPECT_EQ(alpha->Lookup(layout, prompt, false, false)->blocks_size(), 4);
  ASSERT_EQ(invalidate(*alpha, req, &out), grpc::StatusCode::OK);
  EXPECT_EQ(out.blocks_removed(), 3);  // block 2 and everything below it
  EXPECT_EQ(alpha->Lookup(layout, prompt, false, false)->blocks_size(), 1);
  auto st = PolicyStats(*admin);
  EXPECT_EQ(st.pins_active(), 0u);
  EXPECT_EQ(st.removed_by_reason().at("invalidated"), 3u);
  // Quotas: admin only, no negatives, known tenants only; then visible in stats.
  auto quota = [&](Client& c, const std::string& tenant, int64_t gpu, int64_t host) {
    grpc::ClientContext ctx;
    v1::SetTenantQuotaRequest q;
    q.set_session_id(c.session_id());
    q.set_tenant(tenant);
    q.mutable_quota()->set_gpu_bytes(gpu);
    q.mutable_quota()->set_host_bytes(host);
    v1::SetTenantQuotaResponse r;
    return c.stub().SetTenantQuota(&ctx, q, &r).error_code();
  };
  EXPECT_EQ(quota(*alpha, "alpha", 1 << 20, 0), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(quota(*admin, "alpha", -1, 0), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(quota(*admin, "gamma", 1 << 20, 0), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(quota(*admin, "", 1 << 20, 0), grpc::StatusCode::INVALID_ARGUMENT);
  st = PolicyStats(*admin);
  for (const auto& t : st.tenants())
    for (const auto& u : t.tiers()) EXPECT_EQ(u.quota_bytes(), 0u) << t.tenant();  // nothing changed
  ASSERT_EQ(quota(*admin, "beta", 8 << 20, 16 << 20), grpc::StatusCode::OK);
  st = PolicyStats(*alpha);
  ASSERT_EQ(st.tenants_size(), 1);
  EXPECT_EQ(st.tenants(0).tenant(), "alpha");
  bool found = false;
  const auto admin_stats = PolicyStats(*admin);
  for (const auto& t : admin_stats.tenants())
    if (t.tenant() == "beta") {
      found = true;
      EXPECT_EQ(t.tiers(0).quota_bytes(), 8u << 20);
      EXPECT_EQ(t.tiers(1).quota_bytes(), 16u << 20);
    }
  EXPECT_TRUE(found);
  // Stats carries the same per-tenant view.
  auto own = alpha->Stats();
  ASSERT_TRUE(own.ok());
  ASSERT_EQ(own->tenants_size(), 1);
  EXPECT_EQ(own->tenants(0).tenant(), "alpha");
  EXPECT_GT(own->tenants(0).tiers(0).used_bytes() + own->tenants(0).tiers(1).used_bytes(), 0u);
  auto all = admin->Stats();
  ASSERT_TRUE(all.ok());
  bool beta_quota = false;
  for (const auto& t : all->tenants()) beta_quota |= t.tenant() == "beta" && t.tiers(0).quota_bytes() == 8u << 20;
  EXPECT_TRUE(beta_quota);
}

TEST_F(PolicyServiceTest, WarmValidatesTheWholeRequestThenReportsProgress) {
  auto alpha = Connect("alpha", "alpha-token");
  auto admin = Connect("alpha", "admin-secret");
  ASSERT_TRUE(alpha && admin);
  const auto a = Tokens(64, 4000), b = Tokens(32, 5000);
  const uint64_t layout = Publish(*alpha, a);
  Publish(*alpha, b);
  ASSERT_TRUE(admin->Evict(v1::TIER_GPU, 0).ok());
  ASSERT_TRUE(admin->Evict(v1::TIER_HOST, 0).ok());
  auto warm = [&](v1::WarmRequest req, std::vector<v1::WarmProgress>* progress) {
    grpc::ClientContext ctx;
    req.set_session_id(alpha->session_id());
    auto r = alpha->stub().Warm(&ctx, req);
    v1::WarmProgress p;
    while (r->Read(&p)) progress->push_back(p);
    return r->Finish().error_code();
  };
  v1::WarmRequest req;
  auto* p1 = req.add_prefixes();
  p1->set_layout_id(layout);
  for (int32_t t : a) p1->add_tokens(t);
  auto* p2 = req.add_prefixes();
  p2->set_layout_id(layout + 1);  // unknown layout: the whole request is refused
  for (int32_t t : b) p2->add_tokens(t);
  std::vector<v1::WarmProgress> progress;
  EXPECT_EQ(warm(req, &progress), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(progress.empty());
  EXPECT_EQ(alpha->Lookup(layout, a, false, false)->blocks(0).tier(), v1::TIER_SSD);  // nothing moved
  p2->set_layout_id(layout);
  p2->clear_tokens();
  p2->add_tokens(1);  // less than a block
  EXPECT_EQ(warm(req, &progress), grpc::StatusCode::INVALID_ARGUMENT);
  for (int32_t t : b) p2->add_tokens(t);
  req.set_target(v1::TIER_SSD);
  EXPECT_EQ(warm(req, &progress), grpc::StatusCode::INVALID_ARGUMENT);
  req.set_target(v1::TIER_HOST);
  p2->clear_tokens();
  for (int32_t t : b) p2->add_tokens(t);
  ASSERT_EQ(warm(req, &progress), grpc::StatusCode::OK);
  ASSERT_EQ(progress.size(), 2u);
  EXPECT_EQ(progress[0].prefixes_done(), 1);
  EXPECT_EQ(progress[1].prefixes_total(), 2);
  EXPECT_EQ(progress[1].blocks_found(), 6);
  EXPECT_EQ(progress[1].blocks_in_target(), 6);
  const auto after = alpha->Lookup(layout, a, false, false);
  ASSERT_TRUE(after.ok());
  for (const auto& blk : after->blocks()) EXPECT_EQ(blk.tier(), v1::TIER_HOST);
}

int RunCommand(const std::string& cmd, std::string* output) {
  FILE* f = popen((cmd + " 2>&1").c_str(), "r");
  if (f == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) output->append(buf, n);
  const int rc = pclose(f);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST_F(PolicyServiceTest, KvtierctlWarmInvalidateQuotaAndPolicy) {
  auto alpha = Connect("alpha", "alpha-token");
  ASSERT_TRUE(alpha);
  const auto a = Tokens(64, 6000);
  const uint64_t layout = Publish(*alpha, a);
  const std::string ctl = absl::StrCat(KVTIERCTL, " --socket=", config_.socket_path(), " --token=admin-secret --tenant=alpha");
  std::string ignored;
  ASSERT_EQ(RunCommand(ctl + " evict --tier=gpu", &ignored), 0) << ignored;
  ASSERT_EQ(RunCommand(ctl + " evict --tier=host", &ignored), 0) << ignored;
  const std::string bad = (dir_ / "bad.txt").string(), good = (dir_ / "good.txt").string();
  std::ofstream(bad) << "# prefixes\n" << layout << ": 1,2,3\nnot a line\n";
  std::string csv;
  for (int32_t t : a) csv += absl::StrCat(t, ",");
  std::ofstream(good) << "# the system prompt\n\n" << layout << ": " << csv << "\n";
  std::string out;
  EXPECT_EQ(RunCommand(ctl + " warm " + bad, &out), 2);
  EXPECT_TRUE(absl::StrContains(out, "bad.txt:3")) << out;
  EXPECT_EQ(alpha->Lookup(layout, a, false, false)->blocks(0).tier(), v1::TIER_SSD);
  out.clear();
  // The prefix is alpha's: warm it as alpha (the admin token attaches to any tenant).
  EXPECT_EQ(RunCommand(ctl + " warm --to=gpu " + good, &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "[1/1] blocks found 4, in gpu 4")) << out;
  EXPECT_EQ(alpha->Lookup(layout, a, false, false)->blocks(3).tier(), v1::TIER_GPU);
  out.clear();
  EXPECT_EQ(RunCommand(ctl + " quota set --tenant=beta --gpu=-5", &out), 1);
  EXPECT_TRUE(absl::StrContains(out, ">= 0")) << out;
  out.clear();
  EXPECT_EQ(RunCommand(ctl + " quota set --tenant=beta --gpu=1048576", &out), 0) << out;
  out.clear();
  EXPECT_EQ(RunCommand(ctl + " policy", &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "beta")) << out;
  EXPECT_TRUE(absl::StrContains(out, "1048576")) << out;
  out.clear();
  EXPECT_EQ(RunCommand(ctl + " invalidate --tenant=alpha", &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "removed 4 blocks")) << out;
  EXPECT_EQ(alpha->Lookup(layout, a, false, false)->blocks_size(), 0);
}

TEST(PolicyConfigTest, BadCachePolicyConfigIsRejected) {
  v1::DaemonConfig c = DefaultConfig();
  EXPECT_TRUE(ValidateConfig(c).ok());
  c.mutable_cache_policy()->mutable_host()->set_eviction("fifo");
  EXPECT_TRUE(absl::StrContains(ValidateConfig(c).message(), "cache_policy.host.eviction"));
  c = DefaultConfig();
  c.mutable_cache_policy()->mutable_ssd()->set_admission_min_uses(-1);
  EXPECT_FALSE(ValidateConfig(c).ok());
  c = DefaultConfig();
  auto* t = c.add_tenants();
  t->set_name("x");
  t->mutable_quota()->set_gpu_bytes(-1);
  EXPECT_TRUE(absl::StrContains(ValidateConfig(c).message(), "negative"));
  c = DefaultConfig();
  c.mutable_cache_policy()->set_max_pin_ttl_ms(-1);
  EXPECT_FALSE(ValidateConfig(c).ok());
  c = DefaultConfig();
  c.mutable_cache_policy()->mutable_gpu()->set_eviction("arc");
  c.mutable_cache_policy()->mutable_ssd()->set_admission_min_uses(2);
  EXPECT_TRUE(ValidateConfig(c).ok());
}

}  // namespace
}  // namespace kvtier
