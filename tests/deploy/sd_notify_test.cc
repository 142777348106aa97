// kvtierd under a systemd-style supervisor: the real binary is started with NOTIFY_SOCKET pointing at a
// datagram socket this test owns (as systemd does for Type=notify) and must report READY=1 once it
// serves, WATCHDOG=1 keep-alives while WATCHDOG_USEC is set, and STOPPING=1 after SIGTERM before it
// exits cleanly. An invalid configuration must fail before READY=1.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

class SdNotifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("kvtier-notify-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    notify_path_ = (dir_ / "notify.sock").string();
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd_, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    ASSERT_LT(notify_path_.size(), sizeof(addr.sun_path));
    std::strncpy(addr.sun_path, notify_path_.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  }
  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
    std::filesystem::remove_all(dir_);
  }

  // Starts kvtierd with the notify socket and a watchdog of `watchdog_usec` (0: none).
  void StartDaemon(const std::vector<std::string>& flags, uint64_t watchdog_usec) {
    const std::string log = (dir_ / "kvtierd.log").string();
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      ::setenv("NOTIFY_SOCKET", notify_path_.c_str(), 1);
      if (watchdog_usec > 0) {
        ::setenv("WATCHDOG_USEC", std::to_string(watchdog_usec).c_str(), 1);
        ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
      }
      const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (err >= 0) ::dup2(err, 2);
      std::vector<std::string> argv{KVTIERD_PATH};
      argv.insert(argv.end(), flags.begin(), flags.end());
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
  }

  // Collects notify datagrams until one contains `want` as a whole line, or the timeout passes.
  bool WaitFor(const std::string& want, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(1, left.count()))) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) continue;
      std::istringstream lines(std::string(buf, static_cast<size_t>(n)));
      bool found = false;
      for (std::string line; std::getline(lines, line);) {
        messages_.push_back(line);
        found |= line == want;
      }
      if (found) return true;
    }
    return false;
  }

  // Waits for the daemon to exit; returns its exit code, or -1 if it is still running at the timeout
  // or ended by a signal.
  int WaitExit(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

  std::string DaemonLog() const {
    std::ifstream in(dir_ / "kvtierd.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::vector<std::string> BaseFlags() const {
    return {"--socket_path=" + (dir_ / "kvtierd.sock").string(), "--limits.gpu_pool_bytes=16777216",
            "--limits.host_tier_bytes=16777216", "--metrics_address=127.0.0.1:0", "--mover_threads=1"};
  }

  std::filesystem::path dir_;
  std::string notify_path_;
  int fd_ = -1;
  pid_t pid_ = -1;
  std::vector<std::string> messages_;
};

TEST_F(SdNotifyTest, ReadyThenWatchdogThenStoppingOnSigterm) {
  StartDaemon(BaseFlags(), /*watchdog_usec=*/400000);
  ASSERT_TRUE(WaitFor("READY=1", std::chrono::seconds(60))) << DaemonLog();
  // READY=1 is sent only once the daemon serves: its socket is there.
  EXPECT_TRUE(std::filesystem::exists(dir_ / "kvtierd.sock"));
  EXPECT_TRUE(WaitFor("WATCHDOG=1", std::chrono::seconds(5))) << "no keep-alive within 5 s of a 0.4 s watchdog";
  ASSERT_EQ(::kill(pid_, SIGTERM), 0);
  ASSERT_TRUE(WaitFor("STOPPING=1", std::chrono::seconds(20))) << DaemonLog();
  EXPECT_EQ(WaitExit(std::chrono::seconds(20)), 0) << DaemonLog();
  // Order: READY=1 before STOPPING=1, nothing claims readiness again after stopping.
  const auto ready = std::find(messages_.begin(), messages_.end(), "READY=1");
  const auto stopping = std::find(messages_.begin(), messages_.end(), "STOPPING=1");
  EXPECT_LT(ready, stopping);
  EXPECT_EQ(std::find(stopping, messages_.end(), "READY=1"), messages_.end());
  EXPECT_FALSE(std::filesystem::exists(dir_ / "kvtierd.sock")) << "the socket is removed on shutdown";
}

TEST_F(SdNotifyTest, NoWatchdogKeepAlivesWhenTheWatchdogIsOff) {
  StartDaemon(BaseFlags(), /*watchdog_usec=*/0);
  ASSERT_TRUE(WaitFor("READY=1", std::chrono::seconds(60))) << DaemonLog();
  EXPECT_FALSE(WaitFor("WATCHDOG=1", std::chrono::milliseconds(800)));
  ASSERT_EQ(::kill(pid_, SIGTERM), 0);
  EXPECT_TRUE(WaitFor("STOPPING=1", std::chrono::seconds(20))) << DaemonLog();
  EXPECT_EQ(WaitExit(std::chrono::seconds(20)), 0) << DaemonLog();
}

TEST_F(SdNotifyTest, InvalidConfigExitsBeforeReady) {
  std::vector<std::string> flags = BaseFlags();
  flags.push_back("--lease_ms=5");  // below the 100 ms minimum
  StartDaemon(flags, /*watchdog_usec=*/0);
  EXPECT_EQ(WaitExit(std::chrono::seconds(20)), 2) << DaemonLog();
  EXPECT_FALSE(WaitFor("READY=1", std::chrono::milliseconds(100)));
  EXPECT_NE(DaemonLog().find("lease_ms"), std::string::npos) << DaemonLog();
}

TEST_F(SdNotifyTest, MetricsPortInUseFailsStartBeforeReady) {
  // A listener that holds a port: the daemon must refuse to start rather than run without metrics.
  const int holder = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(holder, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(holder, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(holder, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::vector<std::string> flags = BaseFlags();
  flags.push_back("--metrics_address=127.0.0.1:" + std::to_string(ntohs(addr.sin_port)));
  StartDaemon(flags, /*watchdog_usec=*/0);
  EXPECT_EQ(WaitExit(std::chrono::seconds(30)), 1) << DaemonLog();
  EXPECT_FALSE(WaitFor("READY=1", std::chrono::milliseconds(100)));
  EXPECT_NE(DaemonLog().find("metrics listener"), std::string::npos) << DaemonLog();
  ::close(holder);
}

}  // namespace
