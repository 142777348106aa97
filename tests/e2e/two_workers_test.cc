// End to end on the host device: a real kvtierd process and engine-worker processes talking gRPC over a
// unix socket, with self-verifying KV content.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <memory>
#include <thread>

#include "client/client.h"
#include "tests/e2e/daemon_fixture.h"
#include "tests/e2e/process.h"

namespace kvtier {
namespace {
using testing::ChildProcess;
using testing::JsonNumber;

class TwoWorkersTest : public testing::DaemonProcessTest {
 protected:
  TwoWorkersTest() : DaemonProcessTest("kvtier-e2e-") {}
  std::string Worker(const std::vector<std::string>& extra, int* exit_code) {
    std::vector<std::string> argv{WORKER_PATH, "--socket=" + socket_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    ChildProcess w(argv, (dir_ / "worker.log").string());
    const std::string line = w.ReadLine();
    *exit_code = w.Wait();
    return line;
  }
  std::unique_ptr<Client> Admin() {
    ClientOptions o;
    o.target = "unix:" + socket_;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  // A writer that commits 320 tokens (20 blocks), keeps them pinned and holds its session for a minute.
  std::unique_ptr<ChildProcess> StartHolder(const std::string& name) {
    auto holder = std::make_unique<ChildProcess>(
        std::vector<std::string>{WORKER_PATH, "--socket=" + socket_, "--role=writer", "--tokens=320",
                                 "--hold_ms=60000", "--name=" + name},
        (dir_ / "worker.log").string());
    const std::string line = holder->ReadLine();
    EXPECT_EQ(JsonNumber(line, "committed_blocks"), 20) << line;
    return holder;
  }
  // Polls Stats until no block is pinned or `timeout` passes; the pinned count at the end.
  static uint64_t PinnedAfterWaiting(Client& admin, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    uint64_t pinned = 1;
    while (pinned != 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      auto s = admin.Stats();
      EXPECT_TRUE(s.ok());
      if (s.ok()) pinned = s->pinned_blocks();
    }
    return pinned;
  }
};

TEST_F(TwoWorkersTest, SecondProcessReusesThePrefixAcrossAPageOutAndPageIn) {
  int rc = 0;
  const std::string a = Worker({"--role=writer", "--tokens=1000", "--name=A"}, &rc);
  ASSERT_EQ(rc, 0) << a;
  EXPECT_EQ(JsonNumber(a, "committed_blocks"), 62);

  // B finds A's 62 full blocks straight from the GPU tier (fp16: exact).
  std::string b = Worker({"--role=reader", "--tokens=1000", "--extra=0", "--name=B"}, &rc);
  ASSERT_EQ(rc, 0) << b;
  EXPECT_EQ(JsonNumber(b, "matched_blocks"), 62);
  EXPECT_EQ(JsonNumber(b, "matched_tokens"), 992);
  EXPECT_EQ(JsonNumber(b, "bad_values"), 0);
  EXPECT_LT(JsonNumber(b, "max_rel_error"), 1e-3);

  // Page A's blocks out to the host tier (int8) and have B page them back in.
  auto admin = Admin();
  ASSERT_NE(admin, nullptr);
  auto ev = admin->Evict(kvtier::v1::TIER_GPU, 0);
  ASSERT_TRUE(ev.ok()) << ev.status();
  EXPECT_GE(ev->blocks_moved(), 62);
  b = Worker({"--role=reader", "--tokens=1000", "--extra=0", "--name=B2"}, &rc);
  ASSERT_EQ(rc, 0) << b;
  EXPECT_EQ(JsonNumber(b, "matched_blocks"), 62);
  EXPECT_EQ(JsonNumber(b, "bad_values"), 0);                        // within the int8 bound everywhere
  EXPECT_EQ(JsonNumber(b, "blocks_with_quantization_error"), 62);  // and it really went through int8
  auto stats = admin->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GE(stats->page_ins(), 62u);
  EXPECT_GT(stats->bytes_saved_by_quantization(), 0u);
}

TEST_F(TwoWorkersTest, KillingAWorkerReleasesItsPins) {
  auto holder = StartHolder("holder");
  ASSERT_FALSE(HasFailure());
  auto admin = Admin();
  ASSERT_NE(admin, nullptr);
  auto before = admin->Stats();
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->pinned_blocks(), 20u);
  EXPECT_EQ(before->sessions(), 2u);
  // Pinned blocks cannot be paged out.
  auto ev = admin->Evict(kvtier::v1::TIER_GPU, 0);
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->blocks_moved(), 0);

  holder->Signal(SIGKILL);
  holder->Wait();
  EXPECT_EQ(PinnedAfterWaiting(*admin, std::chrono::milliseconds(2000)), 0u);  // within the 2 s lease
  ev = admin->Evict(kvtier::v1::TIER_GPU, 0);
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->blocks_moved(), 20);  // committed blocks stay cached and are now evictable
}

// A worker that hangs (SIGSTOP: its socket stays open, but nothing answers on it) loses its session, and
// so its pins, within about the lease: kvtierd's keepalive pings on the idle Attach stream go unanswered.
TEST_F(TwoWorkersTest, FrozenWorkerLosesItsPinsWithinTheLease) {
  auto holder = StartHolder("frozen");
  ASSERT_FALSE(HasFailure());
  auto admin = Admin();
  ASSERT_NE(admin, nullptr);
  auto before = admin->Stats();
  ASSERT_TRUE(before.ok());
  ASSERT_EQ(before->pinned_blocks(), 20u);
  holder->Signal(SIGSTOP);
  const auto start = std::chrono::steady_clock::now();
  const uint64_t pinned = PinnedAfterWaiting(*admin, std::chrono::seconds(20));
  const double waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(pinned, 0u) << "the frozen worker's session outlived its 2 s lease by " << waited_s << " s";
  EXPECT_LT(waited_s, 8.0);  // keepalive every lease/2, answered within lease/2; slack for a loaded host
  holder->Signal(SIGKILL);
  holder->Wait();
}

TEST_F(TwoWorkersTest, KilledDaemonRestartsAndServesThePrefixFromSsd) {
  int rc = 0;
  const std::string a = Worker({"--role=writer", "--tokens=1000", "--name=A"}, &rc);
  ASSERT_EQ(rc, 0) << a;
  {
    auto admin = Admin();
    ASSERT_NE(admin, nullptr);
    ASSERT_TRUE(admin->Evict(kvtier::v1::TIER_GPU, 0).ok());
    auto ev = admin->Evict(kvtier::v1::TIER_HOST, 0);
    ASSERT_TRUE(ev.ok()) << ev.status();
    EXPECT_EQ(ev->blocks_moved(), 62);
  }
  daemon_->Signal(SIGKILL);
  daemon_->Wait();
  StartDaemon();
  auto admin = Admin();
  ASSERT_NE(admin, nullptr);
  auto s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->ssd_restored(), 62u);
  const std::string b = Worker({"--role=reader", "--tokens=1000", "--extra=0", "--name=B"}, &rc);
  ASSERT_EQ(rc, 0) << b;
  EXPECT_EQ(JsonNumber(b, "matched_blocks"), 62);
  EXPECT_EQ(JsonNumber(b, "bad_values"), 0);
  s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->ssd_reads(), 62u);
}

}  // namespace
}  // namespace kvtier
