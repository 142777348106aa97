// GetPoolHandle on the host device: the client maps the daemon's pool (a memfd passed with SCM_RIGHTS),
// sees the pages the daemon wrote, writes pages the daemon then serves, and runs kvtier's attention
// kernels itself over the mapping with the same result as the daemon's Attend. Failure paths: untrusted
// tenants, unknown layouts, reused or forged tickets.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "client/client.h"
#include "client/fd_transfer.h"
#include "client/local_attention.h"
#include "client/prompt_kv.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "kernels/testing/kv_oracle.h"
#include "tests/daemon/daemon_test_util.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

using testing::SmallLayout;

class PoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTestDir("kvtier-pool-");
    config_ = DefaultConfig();
    config_.set_socket_path((dir_ / "k.sock").string());
    config_.mutable_limits()->set_gpu_pool_bytes(64ull << 20);
    config_.set_admin_token("admin-secret");
    auto* t = config_.add_tenants();
    t->set_name("engine");
    t->set_token("engine-token");
    t->set_pool_access(true);
    t = config_.add_tenants();
    t->set_name("guest");
    t->set_token("guest-token");
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

  std::filesystem::path dir_;
  v1::DaemonConfig config_;
  std::unique_ptr<KvTierServer> server_;
};

TEST_F(PoolTest, EngineMapsThePoolAndRunsAttentionItself) {
  auto c = Connect("engine", "engine-token");
  ASSERT_NE(c, nullptr);
  auto reg = c->RegisterLayout(SmallLayout());  // fp16 resident pages: the activation layout itself
  ASSERT_TRUE(reg.ok());
  const LayoutShape shape{2, 2, 64, 16};
  auto act = PageGeometry::Uniform(shape, DefaultCodec(Format::kFp16, Operand::kKey),
                                   DefaultCodec(Format::kFp16, Operand::kValue));
  ASSERT_TRUE(act.ok());
  std::vector<int32_t> prompt(70);
  for (int i = 0; i < 70; ++i) prompt[i] = 700 + i;
  auto w = WritePromptKv(*c, reg->layout_id(), shape, reg->activation_page_bytes(), prompt, [&](int b, uint8_t* page) {
    testing::FillActivationPage(*act, Format::kFp16, testing::BlockSeed(prompt, 16, b), page);
  });
  ASSERT_TRUE(w.ok()) << w.status();

  auto pool = c->MapPool(reg->layout_id());
  ASSERT_TRUE(pool.ok()) << pool.status();
  const MappedPool& p = **pool;
  // This test reads and writes the mapped pool from the CPU: it is the host device's. With a GPU the
  // daemon picks the CUDA backend, whose pool e2e_pool_gpu_test covers.
  if (p.on_gpu()) GTEST_SKIP() << "kvtierd chose the CUDA device: the GPU pool is e2e_pool_gpu_test's";
  EXPECT_EQ(p.geometry().page_bytes(), reg->page_bytes());
  // The slots of the committed blocks (the session pins them since Commit) hold the oracle's values.
  auto hit = c->Lookup(reg->layout_id(), prompt, true, false);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks_size(), 4);
  std::vector<int32_t> slots;
  for (int b = 0; b < 4; ++b) {
    slots.push_back(hit->blocks(b).slot());
    const auto check = testing::CheckActivationPage(*act, Format::kFp16, testing::BlockSeed(prompt, 16, b),
                                                    p.page(hit->blocks(b).slot()), 1e-3f);
    EXPECT_EQ(check.bad_values, 0) << "block " << b;
  }

  // The engine writes a block straight into the pool; the daemon serves those bytes.
  auto fresh = c->Allocate(reg->layout_id(), 1);
  ASSERT_TRUE(fresh.ok());
  std::vector<int32_t> other(16);
  for (int i = 0; i < 16; ++i) other[i] = 31337 + i;
  testing::FillActivationPage(*act, Format::kFp16, testing::BlockSeed(other, 16, 0), p.page(fresh->slots(0)));
  std::vector<uint64_t> fresh_ids{fresh->block_ids(0)};
  auto back = c->ReadBlocks(fresh_ids);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(std::memcmp((*back)[0].data(), p.page(fresh->slots(0)), (*back)[0].size()), 0);

  // In-engine attention over the mapping equals the daemon's Attend over the same blocks.
  const int hq = 4;
  for (int nq : {1, 3}) {
    std::vector<uint16_t> q(static_cast<size_t>(nq) * hq * 64), local(q.size());
    for (size_t i = 0; i < q.size(); ++i) q[i] = FloatToHalf(std::cos(0.11f * i));
    LocalAttendBatch b;
    b.layer = 1;
    b.num_q_heads = hq;
    b.seq_lens = {64};
    b.q_indptr = {0, nq};
    b.block_table = slots;
    b.block_table_stride = 4;
    b.q = q.data();
    b.out = local.data();
    LocalAttention attention(p);
    ASSERT_TRUE(attention.Run(b).ok());
    v1::AttendRequest req;
    req.set_layout_id(reg->layout_id());
    req.set_layer(1);
    req.set_num_q_heads(hq);
    auto* seq = req.add_sequences();
    for (const auto& blk : hit->blocks()) seq->add_block_ids(blk.block_id());
    seq->set_seq_len(64);
    seq->set_num_queries(nq);
    req.set_queries(std::string(reinterpret_cast<const char*>(q.data()), q.size() * 2));
    auto daemon = c->Attend(req);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    const auto* out = reinterpret_cast<const uint16_t*>(daemon->output().data());
    for (size_t i = 0; i < q.size(); ++i)
      EXPECT_NEAR(HalfToFloat(local[i]), HalfToFloat(out[i]), 2e-3) << "nq " << nq << " element " << i;
    // A slot outside the pool is refused before anything runs.
    b.block_table[2] = p.num_slots() + 5;
    EXPECT_EQ(attention.Run(b).code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(PoolTest, UntrustedTenantsUnknownLayoutsAndBadTicketsAreRefused) {
  auto guest = Connect("guest", "guest-token");
  ASSERT_NE(guest, nullptr);
  auto reg = guest->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  EXPECT_EQ(guest->GetPoolHandle(reg->layout_id()).status().code(), absl::StatusCode::kPermissionDenied);
  auto engine = Connect("engine", "engine-token");
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->GetPoolHandle(reg->layout_id() + 1).status().code(), absl::StatusCode::kNotFound);
  auto h = engine->GetPoolHandle(reg->layout_id());
  ASSERT_TRUE(h.ok()) << h.status();
  // The host device exports one memfd; a CUDA VMM pool one fd per committed chunk (none before a write).
  if (h->kind() == v1::POOL_KIND_HOST_MEMFD) {
    EXPECT_EQ(h->chunks_size(), 1);
  }
  EXPECT_EQ(h->fd_ticket().size(), 16u);
  // A forged ticket gets nothing; the real one works once.
  std::string forged = h->fd_ticket();
  forged[0] ^= 1;
  EXPECT_EQ(FetchFds(h->fd_socket(), forged).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(FetchFds(h->fd_socket(), "short").status().code(), absl::StatusCode::kInvalidArgument);
  auto fds = FetchFds(h->fd_socket(), h->fd_ticket());
  ASSERT_TRUE(fds.ok()) << fds.status();
  ASSERT_EQ(fds->size(), static_cast<size_t>(h->chunks_size()));
  for (int fd : *fds) close(fd);
  EXPECT_EQ(FetchFds(h->fd_socket(), h->fd_ticket()).status().code(), absl::StatusCode::kPermissionDenied);
  // A handle whose fields do not add up is refused by the client before it maps anything.
  v1::GetPoolHandleResponse bad = *h;
  bad.set_num_slots(bad.num_slots() * 4);
  EXPECT_EQ(MappedPool::Map(bad, std::vector<int>{-1}).status().code(), absl::StatusCode::kInvalidArgument);
  bad = *h;
  bad.mutable_resident_codecs()->RemoveLast();
  EXPECT_EQ(MappedPool::Map(bad, std::vector<int>{-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
