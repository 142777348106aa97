// End to end on the host device: four engine-worker processes attach to a kvtierd process, share one
// cached prefix and run daemon-served attention over it, each checking every output against the CPU
// reference over the oracle's pages. One is killed with SIGKILL mid-run: its pins are released within
// the lease and the three others finish unaffected (no mismatch, no error). Also: kvtierctl flush makes
// the prefix durable, so that it survives a kill -9 of the daemon.
#include <gtest/gtest.h>

#include "client/client.h"
#include "tests/e2e/daemon_fixture.h"
#include "tests/e2e/process.h"

namespace kvtier {
namespace {
using testing::ChildProcess;
using testing::JsonNumber;

class AttendWorkersTest : public testing::DaemonProcessTest {
 protected:
  AttendWorkersTest() : DaemonProcessTest("kvtier-e2e4-") {}
  std::unique_ptr<Client> Admin() {
    ClientOptions o;
    o.target = "unix:" + socket_;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  std::string Run(const std::vector<std::string>& argv, int* rc) {
    ChildProcess p(argv, (dir_ / "tool.log").string());
    const std::string line = p.ReadLine();
    *rc = p.Wait();
    return line;
  }

};

TEST_F(AttendWorkersTest, FourWorkersShareAPrefixAndSurviveOneBeingKilled) {
  int rc = 0;
  const std::string w = Run({WORKER_PATH, "--socket=" + socket_, "--role=writer", "--tokens=320", "--name=W"}, &rc);
  ASSERT_EQ(rc, 0) << w;
  ASSERT_EQ(JsonNumber(w, "committed_blocks"), 20);
  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < 4; ++i)
    workers.push_back(std::make_unique<ChildProcess>(
        std::vector<std::string>{WORKER_PATH, "--socket=" + socket_, "--role=attend", "--tokens=320",
                                 "--duration_ms=" + std::string(i == 0 ? "60000" : "4000"),
                                 "--name=A" + std::to_string(i)},
        (dir_ / "worker.log").string()));
  for (int i = 0; i < 4; ++i) {
    const std::string ready = workers[i]->ReadLine();
    ASSERT_EQ(JsonNumber(ready, "ready"), 1) << "worker " << i << ": " << ready;
    EXPECT_EQ(JsonNumber(ready, "pinned_blocks"), 20);
  }
  auto admin = Admin();
  ASSERT_NE(admin, nullptr);
  auto s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->pinned_blocks(), 80u);  // 20 shared blocks, pinned by each of the 4 sessions
  workers[0]->Signal(SIGKILL);
  EXPECT_EQ(workers[0]->Wait(), -SIGKILL);
  uint64_t pinned = 0;
  for (int i = 0; i < 200; ++i) {  // within the 2 s lease
    pinned = admin->Stats()->pinned_blocks();
    if (pinned == 60) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(pinned, 60u);
  for (int i = 1; i < 4; ++i) {
    const std::string done = workers[i]->ReadLine(60000);
    EXPECT_EQ(workers[i]->Wait(), 0) << done;
    EXPECT_EQ(JsonNumber(done, "done"), 1) << done;
    EXPECT_GT(JsonNumber(done, "iterations"), 1) << done;
    EXPECT_EQ(JsonNumber(done, "mismatches"), 0) << done;
    EXPECT_EQ(JsonNumber(done, "errors"), 0) << done;
  }
  s = admin->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->pinned_blocks(), 0u);
  EXPECT_EQ(s->sessions(), 1u);  // the admin only
}

TEST_F(AttendWorkersTest, KvtierctlFlushSurvivesAKillOfTheDaemon) {
  int rc = 0;
  const std::string w = Run({WORKER_PATH, "--socket=" + socket_, "--role=writer", "--tokens=480", "--name=W"}, &rc);
  ASSERT_EQ(rc, 0) << w;
  const std::string flush = Run({KVTIERCTL_PATH, "--socket=" + socket_, "--json", "flush"}, &rc);
  EXPECT_EQ(rc, 0) << flush;
  // The JSON printer spreads the answer over lines: read the whole output instead.
  ChildProcess again({KVTIERCTL_PATH, "--socket=" + socket_, "flush"}, (dir_ / "tool.log").string());
  const std::string line = again.ReadLine();
  EXPECT_EQ(again.Wait(), 0) << line;
  EXPECT_NE(line.find("flushed 0 blocks (durable on SSD), 30 already had a copy, 0 not written"), std::string::npos)
      << line;
  daemon_->Signal(SIGKILL);
  daemon_->Wait();
  StartDaemon();
  auto admin = Admin();
  ASSERT_NE(admin, nullptr);
  EXPECT_EQ(admin->Stats()->ssd_restored(), 30u);
  const std::string r = Run({WORKER_PATH, "--socket=" + socket_, "--role=reader", "--tokens=480", "--extra=0",
                             "--name=R"},
                            &rc);
  ASSERT_EQ(rc, 0) << r;
  EXPECT_EQ(JsonNumber(r, "matched_blocks"), 30);
  EXPECT_EQ(JsonNumber(r, "bad_values"), 0);
  // Drain through kvtierctl: the GPU tier empties (nothing is pinned any more), nothing is dropped.
  const std::string d = Run({KVTIERCTL_PATH, "--socket=" + socket_, "drain", "--tier=gpu"}, &rc);
  EXPECT_EQ(rc, 0) << d;
  EXPECT_EQ(admin->Stats()->blocks_dropped(), 0u);
  EXPECT_EQ(Run({KVTIERCTL_PATH, "--socket=" + socket_, "drain", "--tier=ssd"}, &rc), "");
  EXPECT_EQ(rc, 2);  // usage error
}

}  // namespace
}  // namespace kvtier
