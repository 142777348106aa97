// The real gRPC server in-process, driven through the client library: bad input gets a clear status
// and changes nothing.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <cmath>
#include <cstring>
#include <fstream>

#include "client/client.h"
#include "client/prompt_kv.h"
#include "kernels/attention/attention.h"
#include "kernels/testing/kv_oracle.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "tests/daemon/daemon_test_util.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

using testing::SmallLayout;

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTestDir("kvtier-svc-");
    config_ = DefaultConfig();
    config_.set_socket_path((dir_ / "k.sock").string());
    config_.mutable_limits()->set_gpu_pool_bytes(64ull << 20);
    config_.set_max_message_bytes(4ll << 20);
    config_.set_admin_token("admin-secret");
    auto* t = config_.add_tenants();
    t->set_name("alpha");
    t->set_token("alpha-token");
    t = config_.add_tenants();
    t->set_name("beta");
    t->set_token("beta-token");
    auto s = KvTierServer::Start(config_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<Client> Connect(const std::string& tenant, const std::string& token) {
    ClientOptions o;
    o.target = "unix:" + config_.socket_path();
    o.tenant = tenant;
    o.token = token;
    o.max_message_bytes = 64ll << 20;  // larger than the server's cap, to let oversize requests out
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::filesystem::path dir_;
  v1::DaemonConfig config_;
  std::unique_ptr<KvTierServer> server_;
};

TEST_F(ServiceTest, UnknownTenantOrBadTokenCannotAttach) {
  ClientOptions o;
  o.target = "unix:" + config_.socket_path();
  o.tenant = "alpha";
  o.token = "wrong";
  EXPECT_EQ(Client::Connect(o).status().code(), absl::StatusCode::kUnauthenticated);
  o.tenant = "gamma";
  o.token = "alpha-token";
  EXPECT_EQ(Client::Connect(o).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(ServiceTest, BadLayoutsAreRejected) {
  auto c = Connect("alpha", "alpha-token");
  ASSERT_NE(c, nullptr);
  auto l = SmallLayout();
  l.set_num_kv_heads(0);
  auto r = c->RegisterLayout(l);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("num_kv_heads"), std::string::npos) << r.status();
  l = SmallLayout();
  l.set_head_dim(1 << 20);
  EXPECT_EQ(c->RegisterLayout(l).status().code(), absl::StatusCode::kInvalidArgument);
  l = SmallLayout();
  l.mutable_policy()->mutable_offload_key()->set_format("int3");
  EXPECT_EQ(c->RegisterLayout(l).status().code(), absl::StatusCode::kInvalidArgument);
  auto s = c->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->layouts(), 0u);
}

TEST_F(ServiceTest, PolicyRulesShapeTheOffloadFormat) {
  auto c = Connect("alpha", "alpha-token");
  ASSERT_NE(c, nullptr);
  auto uniform = c->RegisterLayout(SmallLayout());  // daemon default: int8 offload
  ASSERT_TRUE(uniform.ok()) << uniform.status();
  auto l = SmallLayout();
  auto* keep_first = l.mutable_policy()->add_offload_rules();  // keep layer 0 at fp16 below the GPU
  keep_first->add_layers("0");
  keep_first->mutable_key()->set_format("fp16");
  keep_first->mutable_value()->set_format("fp16");
  auto with_rule = c->RegisterLayout(l);
  ASSERT_TRUE(with_rule.ok()) << with_rule.status();
  EXPECT_NE(with_rule->layout_id(), uniform->layout_id());
  EXPECT_GT(with_rule->offload_page_bytes(), uniform->offload_page_bytes());
  // Same request again: same layout.
  auto again = c->RegisterLayout(l);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->layout_id(), with_rule->layout_id());
  // A rule naming a layer the model does not have is refused, and says which rule.
  auto bad = SmallLayout();
  auto* r = bad.mutable_policy()->add_offload_rules();
  r->add_layers("7");
  r->mutable_key()->set_format("fp16");
  auto refused = c->RegisterLayout(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("offload_rules[0]"), std::string::npos) << refused.status();
  auto s = c->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->layouts(), 2u);
}

TEST_F(ServiceTest, UnknownIdsAndWrongSizesChangeNothing) {
  auto c = Connect("alpha", "alpha-token");
  ASSERT_NE(c, nullptr);
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  EXPECT_EQ(c->Allocate(reg->layout_id() + 1, 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->Allocate(reg->layout_id(), 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Allocate(reg->layout_id(), 1 << 20).status().code(), absl::StatusCode::kInvalidArgument);
  auto a = c->Allocate(reg->layout_id(), 1);
  ASSERT_TRUE(a.ok());
  const uint64_t id = a->block_ids(0);
  std::vector<uint64_t> ids{id};
  std::vector<std::string> wrong{std::string(100, 'x')};
  EXPECT_EQ(c->WriteBlocks(ids, wrong).code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint64_t> unknown{id + 1000};
  EXPECT_EQ(c->ReadBlocks(unknown).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->Release(unknown).code(), absl::StatusCode::kNotFound);
  v1::CommitEntry e;
  e.set_block_id(id);
  for (int i = 0; i < 15; ++i) e.add_tokens(i);  // block_size is 16
  EXPECT_EQ(c->Commit(std::span<const v1::CommitEntry>(&e, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  e.add_tokens(15);
  e.set_parent_key("short");
  EXPECT_EQ(c->Commit(std::span<const v1::CommitEntry>(&e, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  // A session id nobody holds.
  grpc::ClientContext ctx;
  v1::StatsRequest req;
  req.set_session_id(c->session_id() ^ 0x5555);
  v1::StatsResponse resp;
  EXPECT_EQ(c->stub().Stats(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  auto s = c->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->blocks_committed(), 0u);
  EXPECT_EQ(s->tiers(0).blocks(), 1u);
}

TEST_F(ServiceTest, OversizeMessagesAreRefused) {
  auto c = Connect("alpha", "alpha-token");
  ASSERT_NE(c, nullptr);
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  auto a = c->Allocate(reg->layout_id(), 1);
  ASSERT_TRUE(a.ok());
  std::vector<uint64_t> ids{a->block_ids(0)};
  std::vector<std::string> huge{std::string(8 << 20, 'x')};  // server cap is 4 MiB
  EXPECT_EQ(c->WriteBlocks(ids, huge).code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(ServiceTest, AdminCallsNeedTheAdminToken) {
  auto tenant = Connect("alpha", "alpha-token");
  ASSERT_NE(tenant, nullptr);
  EXPECT_FALSE(tenant->is_admin());
  EXPECT_EQ(tenant->Evict(v1::TIER_GPU, 0).status().code(), absl::StatusCode::kPermissionDenied);
  v1::TierLimits limits;
  limits.set_host_tier_bytes(1 << 20);
  EXPECT_EQ(tenant->SetTierLimits(limits).status().code(), absl::StatusCode::kPermissionDenied);
  auto admin = Connect("alpha", "admin-secret");
  ASSERT_NE(admin, nullptr);
  EXPECT_TRUE(admin->is_admin());
  EXPECT_TRUE(admin->Evict(v1::TIER_GPU, 0).ok());
  auto set = admin->SetTierLimits(limits);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->limits().host_tier_bytes(), 1u << 20);
}

TEST_F(ServiceTest, TenantsCannotFindOrTouchEachOthersBlocks) {
  auto a = Connect("alpha", "alpha-token");
  auto b = Connect("beta", "beta-token");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto reg = a->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(b->RegisterLayout(SmallLayout()).ok());
  auto blk = a->Allocate(reg->layout_id(), 1);
  ASSERT_TRUE(blk.ok());
  v1::CommitEntry e;
  e.set_block_id(blk->block_ids(0));
  for (int i = 0; i < 16; ++i) e.add_tokens(100 + i);
  auto committed = a->Commit(std::span<const v1::CommitEntry>(&e, 1));
  ASSERT_TRUE(committed.ok()) << committed.status();
  std::vector<int32_t> tokens(e.tokens().begin(), e.tokens().end());
  auto hit_b = b->Lookup(reg->layout_id(), tokens, true, false);
  ASSERT_TRUE(hit_b.ok());
  EXPECT_EQ(hit_b->blocks_size(), 0);  // not even a hint
  std::vector<uint64_t> theirs{committed->results(0).block_id()};
  EXPECT_EQ(b->ReadBlocks(theirs).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b->Release(theirs).code(), absl::StatusCode::kNotFound);
  // Naming alpha's key as a parent does not let beta extend alpha's chain.
  auto blk_b = b->Allocate(reg->layout_id(), 1);
  ASSERT_TRUE(blk_b.ok());
  v1::CommitEntry eb = e;
  eb.set_block_id(blk_b->block_ids(0));
  eb.set_parent_key(committed->results(0).key());
  EXPECT_EQ(b->Commit(std::span<const v1::CommitEntry>(&eb, 1)).status().code(), absl::StatusCode::kNotFound);
  auto hit_a = a->Lookup(reg->layout_id(), tokens, false, false);
  ASSERT_TRUE(hit_a.ok());
  EXPECT_EQ(hit_a->blocks_size(), 1);
}

// Daemon-served attention (decode and prefix-extend) equals the CPU reference over the same pages.
TEST_F(ServiceTest, AttendMatchesTheReference) {
  auto c = Connect("alpha", "alpha-token");
  ASSERT_NE(c, nullptr);
  const auto wire = SmallLayout();  // 2 layers, 2 KV heads, head_dim 64, block 16, fp16
  auto reg = c->RegisterLayout(wire);
  ASSERT_TRUE(reg.ok());
  const LayoutShape shape{2, 2, 64, 16};
  auto geometry = PageGeometry::Uniform(shape, DefaultCodec(Format::kFp16, Operand::kKey),
                                        DefaultCodec(Format::kFp16, Operand::kValue));
  ASSERT_TRUE(geometry.ok());
  std::vector<int32_t> prompt(70);
  for (int i = 0; i < 70; ++i) prompt[i] = 500 + i;
  std::vector<std::string> pages(5, std::string(reg->activation_page_bytes(), '\0'));
  auto fill = [&](int b, uint8_t* page) {
    testing::FillActivationPage(*geometry, Format::kFp16, testing::BlockSeed(prompt, 16, b), page);
    std::memcpy(pages[b].data(), page, pages[b].size());
  };
  auto w = WritePromptKv(*c, reg->layout_id(), shape, reg->activation_page_bytes(), prompt, fill);
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<uint64_t> ids = w->block_ids;
  ids.push_back(w->tail_block_id);  // 4 full blocks + a private 6-token tail
  // Local reference pool: the same fp16 pages at slots 0..4.
  std::string pool;
  for (const auto& p : pages) pool += p;
  const int hq = 4;
  for (int nq : {1, 3}) {  // decode, then prefix-extend of 3 tokens
    std::vector<uint16_t> q(static_cast<size_t>(nq) * hq * 64);
    for (size_t i = 0; i < q.size(); ++i) q[i] = FloatToHalf(std::sin(0.37f * i));
    v1::AttendRequest req;
    req.set_layout_id(reg->layout_id());
    req.set_layer(1);
    req.set_num_q_heads(hq);
    auto* seq = req.add_sequences();
    for (uint64_t id : ids) seq->add_block_ids(id);
    seq->set_seq_len(70);
    seq->set_num_queries(nq);
    req.set_queries(std::string(reinterpret_cast<const char*>(q.data()), q.size() * 2));
    auto got = c->Attend(req);
    ASSERT_TRUE(got.ok()) << got.status();
    std::vector<uint16_t> ref(q.size());
    const int32_t seq_len = 70;
    const int32_t table[5] = {0, 1, 2, 3, 4};
    const int32_t indptr[2] = {0, nq};
    ExtendParams p{&*geometry, {reinterpret_cast<const uint8_t*>(pool.data()), nullptr, 5}, {1, &seq_len, table, 5},
                   indptr, 1, hq, 64, ActDtype::kFp16, q.data(), ref.data(), 0.0f};
    ASSERT_TRUE(PagedExtendRef(p).ok());
    ASSERT_EQ(got->output().size(), ref.size() * 2);
    const auto* out = reinterpret_cast<const uint16_t*>(got->output().data());
    for (size_t i = 0; i < ref.size(); ++i)
      EXPECT_NEAR(HalfToFloat(out[i]), HalfToFloat(ref[i]), 2e-3) << "nq " << nq << " element " << i;
  }
  // Bad input: wrong query bytes, a layer the model lacks, seq_len beyond the blocks, a block not ours.
  v1::AttendRequest bad;
  bad.set_layout_id(reg->layout_id());
  bad.set_layer(1);
  bad.set_num_q_heads(hq);
  auto* seq = bad.add_sequences();
  for (uint64_t id : ids) seq->add_block_ids(id);
  seq->set_seq_len(70);
  seq->set_num_queries(1);
  bad.set_queries(std::string(10, 'x'));
  EXPECT_EQ(c->Attend(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.set_queries(std::string(hq * 64 * 2, '\0'));
  bad.set_layer(2);
  EXPECT_EQ(c->Attend(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.set_layer(1);
  bad.mutable_sequences(0)->set_seq_len(81);
  EXPECT_EQ(c->Attend(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.mutable_sequences(0)->set_seq_len(70);
  auto other = Connect("beta", "beta-token");
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->RegisterLayout(wire).ok());
  EXPECT_EQ(other->Attend(bad).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(c->Attend(bad).ok());
}

TEST(Config, DefaultsAreValidAndFlagsOverride) {
  auto c = DefaultConfig();
  EXPECT_TRUE(ValidateConfig(c).ok());
  ASSERT_TRUE(ApplyFlags({"--socket_path=/tmp/x.sock", "--limits.host_tier_bytes=12345678"}, &c).ok());
  EXPECT_EQ(c.socket_path(), "/tmp/x.sock");
  EXPECT_EQ(c.limits().host_tier_bytes(), 12345678u);
  EXPECT_FALSE(ApplyFlags({"--no_such_field=1"}, &c).ok());
  EXPECT_FALSE(ApplyFlags({"--lease_ms=abc"}, &c).ok());
  EXPECT_FALSE(ApplyFlags({"positional"}, &c).ok());
  c.set_lease_ms(5);
  EXPECT_FALSE(ValidateConfig(c).ok());
}

TEST(Config, FileErrorsNameTheLine) {
  const auto path = std::filesystem::temp_directory_path() / ("kvtier-bad-" + std::to_string(::getpid()) + ".conf");
  {
    std::ofstream f(path);
    f << "socket_path: \"/tmp/a.sock\"\nlimits { gpu_pool_bytes: -3 }\n";
  }
  auto c = LoadConfigFile(path.string());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("line 2"), std::string::npos) << c.status();
  {
    std::ofstream f(path);
    f << "socket_path: \"/tmp/a.sock\"\nlimits { host_tier_bytes: 1048576 }\n";
  }
  c = LoadConfigFile(path.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->limits().host_tier_bytes(), 1048576u);
  EXPECT_EQ(c->limits().gpu_pool_bytes(), DefaultConfig().limits().gpu_pool_bytes());  // default kept
  std::filesystem::remove(path);
  EXPECT_EQ(LoadConfigFile("/nonexistent/kvtier.conf").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvtier
