// The fixture of the e2e tests that run a real kvtierd process (KVTIERD_PATH) with GPU, host and SSD
// tiers in a per-test directory; the daemon must shut down cleanly on SIGTERM at the end.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tests/e2e/process.h"

namespace kvtier::testing {

class DaemonProcessTest : public ::testing::Test {
 protected:
  explicit DaemonProcessTest(std::string prefix) : prefix_(std::move(prefix)) {}

  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           (prefix_ + std::to_string(getpid()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    socket_ = (dir_ / "kvtierd.sock").string();
    StartDaemon();
  }
  // (Re)starts kvtierd on the test's socket and SSD directory.
  void StartDaemon() {
    std::filesystem::remove(socket_);
    daemon_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{KVTIERD_PATH, "--socket_path=" + socket_, "--lease_ms=2000",
                                 "--limits.gpu_pool_bytes=268435456", "--limits.host_tier_bytes=268435456",
                                 "--ssd_dir=" + (dir_ / "ssd").string(), "--limits.ssd_tier_bytes=268435456"},
        (dir_ / "kvtierd.log").string());
    const std::string error = WaitForDaemon(*daemon_, socket_, dir_ / "kvtierd.log");
    ASSERT_TRUE(error.empty()) << error;
  }
  void TearDown() override {
    if (daemon_) {
      daemon_->Signal(SIGTERM);
      EXPECT_EQ(daemon_->Wait(), 0) << "kvtierd did not shut down cleanly";
    }
    std::filesystem::remove_all(dir_);
  }

  const std::string prefix_;
  std::filesystem::path dir_;
  std::string socket_;
  std::unique_ptr<ChildProcess> daemon_;
};

}  // namespace kvtier::testing
