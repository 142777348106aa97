// A stuck disk must not hang lookups: kvtierd with every SSD read hanging forever (fault_spec
// ssd_read:hang) and a 500 ms I/O deadline still answers a lookup of SSD-resident blocks within a bounded
// time (with a shorter prefix: those blocks are unavailable now, not lost and not wrong), keeps serving
// other calls meanwhile, and shuts down cleanly.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "client/client.h"
#include "client/prompt_kv.h"
#include "kernels/testing/kv_oracle.h"
#include "tests/e2e/process.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

class StuckDiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("kvtier-stuck-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    socket_ = (dir_ / "kvtierd.sock").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<testing::ChildProcess> StartDaemon(const std::string& fault_spec) {
    auto d = std::make_unique<testing::ChildProcess>(
        std::vector<std::string>{KVTIERD_PATH, "--socket_path=" + socket_, "--lease_ms=1000",
                                 "--limits.gpu_pool_bytes=8388608", "--limits.host_tier_bytes=8388608",
                                 "--ssd_dir=" + (dir_ / "ssd").string(), "--limits.ssd_tier_bytes=33554432",
                                 "--ssd_io_timeout_ms=500", "--fault_spec=" + fault_spec},
        (dir_ / "kvtierd.log").string());
    const std::string error = testing::WaitForDaemon(*d, socket_, dir_ / "kvtierd.log");
    EXPECT_TRUE(error.empty()) << error;
    return d;
  }
  std::unique_ptr<Client> Connect() {
    ClientOptions o;
    o.target = "unix:" + socket_;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::filesystem::path dir_;
  std::string socket_;
};

// Registers a small layout and writes, commits and releases a 12-block prompt; returns the layout id.
uint64_t WriteTwelveBlocks(Client& c, std::vector<int32_t>* prompt) {
  v1::LayoutSpec spec;
  spec.set_num_layers(2);
  spec.set_num_kv_heads(2);
  spec.set_head_dim(64);
  spec.set_block_size(16);
  spec.set_dtype(v1::ACTIVATION_DTYPE_FP16);
  auto reg = c.RegisterLayout(spec);
  EXPECT_TRUE(reg.ok()) << reg.status();
  if (!reg.ok()) return 0;
  const LayoutShape shape{2, 2, 64, 16};
  auto g = PageGeometry::Uniform(shape, DefaultCodec(Format::kFp16, Operand::kKey),
                                 DefaultCodec(Format::kFp16, Operand::kValue));
  EXPECT_TRUE(g.ok());
  prompt->resize(16 * 12);
  for (size_t i = 0; i < prompt->size(); ++i) (*prompt)[i] = static_cast<int32_t>(i * 31 + 7);
  auto fill = [&](int b, uint8_t* page) {
    testing::FillActivationPage(*g, Format::kFp16, testing::BlockSeed(*prompt, 16, b), page);
  };
  auto w = WritePromptKv(c, reg->layout_id(), shape, reg->activation_page_bytes(), *prompt, fill);
  EXPECT_TRUE(w.ok()) << w.status();
  if (!w.ok()) return 0;
  EXPECT_TRUE(c.Release(w->block_ids).ok());
  return reg->layout_id();
}

TEST_F(StuckDiskTest, LookupsOfBlocksOnAHungDiskReturnWithinTheIoDeadline) {
  auto daemon = StartDaemon("ssd_read:hang");
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  std::vector<int32_t> prompt;
  const uint64_t layout_id = WriteTwelveBlocks(*c, &prompt);
  ASSERT_NE(layout_id, 0u);
  // Everything down to the SSD tier (writes work; only reads hang).
  ASSERT_TRUE(c->Evict(v1::TIER_GPU, 0).ok());
  auto ev = c->Evict(v1::TIER_HOST, 0);
  ASSERT_TRUE(ev.ok()) << ev.status();
  ASSERT_EQ(ev->blocks_moved(), 12);

  for (int attempt = 0; attempt < 3; ++attempt) {  // the later ones find every I/O buffer held by hung reads
    const auto t0 = std::chrono::steady_clock::now();
    auto hit = c->Lookup(layout_id, prompt, true, true);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(hit.ok()) << hit.status();
    EXPECT_EQ(hit->blocks_size(), 0) << "a block on the stuck disk cannot have been paged in";
    EXPECT_LT(s, 5.0) << "lookup " << attempt << " hung on the stuck disk";
    auto stats = c->Stats();  // the daemon keeps answering
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->pinned_blocks(), 0u) << "a failed page-in left pins behind";
  }
  // The blocks are unavailable, not lost: a lookup without page-in still walks the whole prefix.
  auto index_only = c->Lookup(layout_id, prompt, false, false);
  ASSERT_TRUE(index_only.ok()) << index_only.status();
  EXPECT_EQ(index_only->blocks_size(), 12);
  c.reset();
  daemon->Signal(SIGTERM);
  EXPECT_EQ(daemon->Wait(), 0) << "kvtierd did not shut down cleanly with hung I/O";
}

TEST_F(StuckDiskTest, DemotionsToAHungDiskGiveUpAtTheDeadlineAndLookupsStillAnswer) {
  auto daemon = StartDaemon("ssd_write:hang");
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  std::vector<int32_t> prompt;
  const uint64_t layout_id = WriteTwelveBlocks(*c, &prompt);
  ASSERT_NE(layout_id, 0u);
  ASSERT_TRUE(c->Evict(v1::TIER_GPU, 0).ok());
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto t0 = std::chrono::steady_clock::now();
    auto ev = c->Evict(v1::TIER_HOST, 0);  // every write hangs: the blocks cannot reach the SSD tier
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(ev.ok()) << ev.status();
    EXPECT_EQ(ev->blocks_moved(), 0);
    EXPECT_LT(s, 5.0) << "a demotion hung on the stuck disk";
    auto hit = c->Lookup(layout_id, prompt, true, true);
    ASSERT_TRUE(hit.ok()) << hit.status();
    ASSERT_TRUE(c->Release([&] {
                   std::vector<uint64_t> ids;
                   for (const auto& b : hit->blocks()) ids.push_back(b.block_id());
                   return ids;
                 }())
                    .ok());
  }
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pinned_blocks(), 0u);
  c.reset();
  daemon->Signal(SIGTERM);
  EXPECT_EQ(daemon->Wait(), 0) << "kvtierd did not shut down cleanly with hung writes";
}

}  // namespace
}  // namespace kvtier
