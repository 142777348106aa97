// Test helpers for end-to-end tests: child processes with captured stdout, and a kvtierd child.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace kvtier::testing {

class ChildProcess {
 public:
  // Starts argv[0] with arguments; stdout is captured, stderr goes to `stderr_path` (or inherited).
  ChildProcess(const std::vector<std::string>& argv, const std::string& stderr_path = "") {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      close(fds[0]);
      close(fds[1]);
      if (!stderr_path.empty()) {
        const int e = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (e >= 0) dup2(e, 2);
      }
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    out_fd_ = fds[0];
  }
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) close(out_fd_);
  }
  pid_t pid() const { return pid_; }

  // Reads stdout until a full line arrives (or EOF / timeout); returns it without the newline.
  std::string ReadLine(int timeout_ms = 30000) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (true) {
      const auto nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      if (std::chrono::steady_clock::now() > deadline) return "";
      char buf[4096];
      fcntl(out_fd_, F_SETFL, O_NONBLOCK);
      const ssize_t n = read(out_fd_, buf, sizeof buf);
      if (n == 0) return buffer_;  // EOF
      if (n > 0) {
        buffer_.append(buf, n);
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  }
  // Waits for exit; returns the exit status (or -signal).
  int Wait() {
    if (reaped_) return exit_status_;
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    return exit_status_;
  }
  void Signal(int sig) { kill(pid_, sig); }
  // True once the child has exited (it is reaped; exit_status() says how).
  bool Exited() {
    if (reaped_) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) != pid_) return false;
    reaped_ = true;
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    return true;
  }
  int exit_status() const { return exit_status_; }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  bool reaped_ = false;
  int exit_status_ = 0;
  std::string buffer_;
};

// Extracts a numeric field from a flat JSON line ("key":123).
inline double JsonNumber(const std::string& line, const std::string& key) {
  const auto pos = line.find("\"" + key + "\":");
  if (pos == std::string::npos) return -1;
  return std::stod(line.substr(pos + key.size() + 3));
}

#ifdef KVTIERD_PATH
// The kvtierd a test starts: $KVTIERD when set (a relocated bundle on the GPU machine), else the build's.
inline std::string KvtierdBinary() {
  const char* env = std::getenv("KVTIERD");
  return env != nullptr && *env != '\0' ? env : KVTIERD_PATH;
}
#endif

inline std::string ReadTextFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Waits until a kvtierd child has created its socket. Fails at once if the daemon exits first, and
// otherwise after `timeout_ms` (generous: sanitizer builds on a loaded 2-core CI host start slowly);
// either way the message carries the daemon's log.
inline std::string WaitForDaemon(ChildProcess& daemon, const std::filesystem::path& socket,
                                 const std::filesystem::path& log, int timeout_ms = 60000) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::milliseconds(timeout_ms);
  while (!std::filesystem::exists(socket)) {
    if (daemon.Exited()) {
      return "kvtierd exited with status " + std::to_string(daemon.exit_status()) + " before creating " +
             socket.string() + "; its log:\n" + ReadTextFile(log);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return "kvtierd did not create " + socket.string() + " within " + std::to_string(timeout_ms) +
             " ms; its log:\n" + ReadTextFile(log);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return "";
}

}  // namespace kvtier::testing
