// kvtier-stress: the reliability campaign driver (docs/reliability.md).
//
//   kvtier-stress --mode=stress|crash|soak --kvtierd=PATH [--workers=N] [--duration_s=S] [--rounds=R]
//                 [--fault_spec=SPEC] [--json=FILE] [...options of stress_model.h]
//
// The orchestrator (this process) spawns kvtierd (small tiers, an SSD tier in --dir), forks worker
// processes, an operator and verifiers (stress_roles.h), kills workers at random (and, in crash mode,
// the daemon), samples the daemon's resources (soak), and prints one JSON report. It never calls gRPC
// itself, so its forks are clean, and it has no threads. Exit status 0 only when every count that must
// be zero is zero (and, in soak mode, the resources stayed flat).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli_args.h"
#include "tests/reliability/stress_roles.h"

namespace kvtier::stress {
namespace {

using Clock = std::chrono::steady_clock;

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
}

// Forks a child that runs `fn` and exits with its result.
template <class Fn>
pid_t Spawn(Fn&& fn) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int rc = fn();
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(rc);
  }
  return pid;
}

int WaitExit(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

// Waits up to timeout_ms; SIGKILLs and reaps the child when it is still running then. Returns its
// status, or nullopt-like INT32_MIN when it had to be killed.
int WaitOrKill(pid_t pid, int timeout_ms) {
  const int64_t until = SteadyMs() + timeout_ms;
  int status = 0;
  while (SteadyMs() < until) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return INT32_MIN;
}

class Daemon {
 public:
  explicit Daemon(const Options& o) : o_(o) {}
  ~Daemon() {
    if (pid_ > 0) Kill();
  }
  bool Start() {
    std::filesystem::remove(o_.socket);
    std::vector<std::string> argv{o_.kvtierd,
                                  "--socket_path=" + o_.socket,
                                  absl::StrCat("--lease_ms=", o_.lease_ms),
                                  absl::StrCat("--limits.gpu_pool_bytes=", o_.gpu_max),
                                  absl::StrCat("--limits.host_tier_bytes=", o_.host_max),
                                  "--ssd_dir=" + o_.dir + "/ssd",
                                  absl::StrCat("--limits.ssd_tier_bytes=", o_.ssd_bytes),
                                  absl::StrCat("--ssd_io_timeout_ms=", o_.io_timeout_ms),
                                  "--mover_threads=2"};
    if (!o_.fault_spec.empty()) argv.push_back("--fault_spec=" + o_.fault_spec);
    for (absl::string_view a : absl::StrSplit(o_.daemon_args, ' ', absl::SkipEmpty())) argv.emplace_back(a);
    const std::string log = o_.dir + "/kvtierd.log";
    std::fflush(stdout);
    std::fflush(stderr);
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 2);
        dup2(fd, 1);
      }
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    ++starts_;
    for (int waited = 0; waited < 30000; waited += 10) {
      if (std::filesystem::exists(o_.socket)) return true;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        std::fprintf(stderr, "kvtierd exited at start (see %s)\n", log.c_str());
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  void Kill() {
    kill(pid_, SIGKILL);
    WaitExit(pid_);
    pid_ = -1;
  }
  // SIGTERM; the exit status, or INT32_MIN if it had to be killed after timeout_ms.
  int Stop(int timeout_ms) {
    kill(pid_, SIGTERM);
    const int rc = WaitOrKill(pid_, timeout_ms);
    pid_ = -1;
    return rc;
  }
  pid_t pid() const { return pid_; }
  int starts() const { return starts_; }

 private:
  const Options& o_;
  pid_t pid_ = -1;
  int starts_ = 0;
};

// One soak sample of the daemon process and the traffic.
struct Sample {
  double t_s = 0;
  uint64_t rss = 0, threads = 0, fds = 0;
  uint64_t gpu_used = 0, host_used = 0, ssd_used = 0, pinned_blocks = 0;
  double p99_us = 0;
  uint64_t ops = 0;
};

void ReadProcStatus(pid_t pid, Sample* s) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s->rss = std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
    if (line.rfind("Threads:", 0) == 0) s->threads = std::strtoull(line.c_str() + 8, nullptr, 10);
  }
  if (DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str())) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++s->fds;
    closedir(d);
  }
}

class Orchestrator {
 public:
  Orchestrator(const Options& o, Shared* shared) : o_(o), shared_(shared), daemon_(o), rng_(o.seed) {}

  int Run() {
    std::filesystem::create_directories(o_.dir);
    if (o_.kvtierd.empty()) {
      std::fprintf(stderr, "--kvtierd=PATH is required (the driver starts and kills the daemon itself)\n");
      return 2;
    }
    if (o_.mode == "crash") std::filesystem::remove_all(o_.dir + "/ssd");
    if (!daemon_.Start()) return Fail("kvtierd did not start");
    start_ms_ = SteadyMs();
    if (o_.mode == "crash") {
      RunCrashRounds();
    } else {
      RunLoad(static_cast<int64_t>(o_.duration_s * 1000), /*crash_at_ms=*/-1);
    }
    // Final checks against the (last) daemon: sample verification, acknowledged blocks, no leaked pins.
    RunChild([&] { return RunVerifier(o_, shared_, /*final_check=*/true, rng_()); }, 60000 + o_.lease_ms);
    daemon_exit_ = daemon_.Stop(30000);
    elapsed_s_ = static_cast<double>(SteadyMs() - start_ms_) / 1000;
    return Report();
  }

 private:
  int Fail(const std::string& why) {
    std::fprintf(stderr, "kvtier-stress: %s\n", why.c_str());
    return 2;
  }

  template <class Fn>
  void RunChild(Fn&& fn, int timeout_ms) {
    const pid_t pid = Spawn(std::forward<Fn>(fn));
    if (WaitOrKill(pid, timeout_ms) == INT32_MIN) shared_->hung_calls.fetch_add(1);
  }

  pid_t StartWorker() {
    const int index = next_worker_++;
    const uint64_t seed = rng_();
    return Spawn([this, index, seed] { return RunWorker(o_, shared_, index, seed); });
  }

  void KillWorker(pid_t pid) {
    kill(pid, SIGKILL);
    const absl::Time now = absl::Now();
    std::fprintf(stderr, "kill worker pid=%d at=%s\n", static_cast<int>(pid),
                 absl::FormatTime("%H:%M:%E3S", now, absl::UTCTimeZone()).c_str());
    const uint64_t slot = shared_->killed_next.fetch_add(1) % Shared::kKilled;
    shared_->killed_at_unix_ms[slot].store(absl::ToUnixMillis(now));
    shared_->killed_at_ms[slot].store(SteadyMs());
    shared_->killed_pid[slot].store(pid);
    shared_->worker_kills.fetch_add(1);
  }

  // Runs workers and the operator for duration_ms (killing and replacing workers at random), or until
  // crash_at_ms, when the daemon is killed with SIGKILL first.
  void RunLoad(int64_t duration_ms, int64_t crash_at_ms) {
    shared_->stop.store(0);
    std::vector<pid_t> workers;
    for (int i = 0; i < o_.workers; ++i) workers.push_back(StartWorker());
    const pid_t op =
        Spawn([this, crash = crash_at_ms >= 0, seed = rng_()] { return RunOperator(o_, shared_, crash, seed); });
    std::exponential_distribution<double> kill_gap(1.0 / std::max(1, o_.kill_every_ms));
    const int64_t begin = SteadyMs();
    int64_t next_kill = o_.kill_every_ms > 0 ? begin + static_cast<int64_t>(kill_gap(rng_)) : INT64_MAX;
    int64_t next_sample = begin;
    SharedHistogram::Snapshot last = shared_->all_latency.Take();
    const int64_t end = crash_at_ms >= 0 ? begin + crash_at_ms : begin + duration_ms;
    while (SteadyMs() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      const int64_t now = SteadyMs();
      for (pid_t& w : workers) {  // replace workers that exited or were killed
        int status = 0;
        if (waitpid(w, &status, WNOHANG) == w) {
          if (WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 4) ++worker_failures_;
          w = StartWorker();
        }
      }
      if (now >= next_kill) {
        KillWorker(workers[rng_() % workers.size()]);
        next_kill = now + std::max<int64_t>(50, static_cast<int64_t>(kill_gap(rng_)));
      }
      if (o_.mode == "soak" && now >= next_sample) {
        TakeSample(&last);
        next_sample = now + static_cast<int64_t>(o_.sample_s * 1000);
      }
    }
    if (crash_at_ms >= 0) {
      daemon_.Kill();  // kill -9 in the middle of whatever the workers and movers were doing
      for (pid_t w : workers) kill(w, SIGKILL);
      kill(op, SIGKILL);
      for (pid_t w : workers) WaitExit(w);
      WaitExit(op);
      return;
    }
    shared_->stop.store(1);
    for (pid_t w : workers)
      if (WaitOrKill(w, o_.hang_ms + 10000) == INT32_MIN) shared_->hung_calls.fetch_add(1);
    if (WaitOrKill(op, o_.hang_ms + 10000) == INT32_MIN) shared_->hung_calls.fetch_add(1);
    if (o_.mode == "soak") TakeSample(&last);
  }

  void RunCrashRounds() {
    std::uniform_int_distribution<int> at(o_.crash_min_ms, std::max(o_.crash_min_ms, o_.crash_max_ms));
    for (int r = 0; r < o_.rounds; ++r) {
      if (r > 0) RunChild([&] { return RunVerifier(o_, shared_, false, rng_()); }, 120000);
      RunLoad(0, at(rng_));
      ++rounds_done_;
      // A durable SSD copy of a block that lives above is shed when the SSD tier needs room (it loses
      // nothing while the daemon runs). Acknowledgements are checked only when the tier never came close
      // to full since they were made.
      if (shared_->acked_next.load() > 0 && shared_->ssd_used_max_since_ack.load() + (8 << 20) > o_.ssd_bytes) {
        shared_->acked_unverifiable.fetch_add(std::min<uint64_t>(shared_->acked_next.load(), Shared::kAcked));
        for (int i = 0; i < Shared::kAcked; ++i) shared_->acked_prompt[i].store(0);
        shared_->acked_next.store(0);
      }
      RunChild([&] { return RunSsdAudit(o_, shared_); }, 120000);
      if (!daemon_.Start()) {
        ++restart_failures_;
        break;
      }
    }
  }

  void TakeSample(SharedHistogram::Snapshot* last) {
    Sample s;
    s.t_s = static_cast<double>(SteadyMs() - start_ms_) / 1000;
    ReadProcStatus(daemon_.pid(), &s);
    s.gpu_used = shared_->stats_gpu_used.load();
    s.host_used = shared_->stats_host_used.load();
    s.ssd_used = shared_->stats_ssd_used.load();
    s.pinned_blocks = shared_->stats_pinned_blocks.load();
    const SharedHistogram::Snapshot now = shared_->all_latency.Take();
    const SharedHistogram::Snapshot delta = now - *last;
    s.p99_us = delta.Quantile(0.99);
    s.ops = delta.count;
    *last = now;
    samples_.push_back(s);
  }

  // Soak verdict: after warm-up, the last third of the samples may not exceed the first third by more
  // than a margin (RSS beyond what the tiers account for, fds, threads).
  std::string SoakVerdict(bool* flat) {
    *flat = true;
    if (samples_.size() < 6) return "\"soak\":{\"verdict\":\"too few samples\"}";
    const size_t warm = 2, n = samples_.size() - warm, third = std::max<size_t>(1, n / 3);
    auto avg = [&](size_t from, size_t count, auto field) {
      double sum = 0;
      for (size_t i = from; i < from + count; ++i) sum += field(samples_[i]);
      return sum / static_cast<double>(count);
    };
    auto unaccounted = [](const Sample& s) {
      return static_cast<double>(s.rss) - static_cast<double>(s.gpu_used + s.host_used);
    };
    const double u0 = avg(warm, third, unaccounted), u1 = avg(samples_.size() - third, third, unaccounted);
    const double f0 = avg(warm, third, [](const Sample& s) { return double(s.fds); });
    const double f1 = avg(samples_.size() - third, third, [](const Sample& s) { return double(s.fds); });
    const double t0 = avg(warm, third, [](const Sample& s) { return double(s.threads); });
    const double t1 = avg(samples_.size() - third, third, [](const Sample& s) { return double(s.threads); });
    const double p0 = avg(warm, third, [](const Sample& s) { return s.p99_us; });
    const double p1 = avg(samples_.size() - third, third, [](const Sample& s) { return s.p99_us; });
    const bool rss_ok = u1 - u0 < std::max(64.0 * (1 << 20), 0.25 * std::max(u0, 1.0));
    const bool fds_ok = f1 - f0 < 16, threads_ok = t1 - t0 < 8;
    *flat = rss_ok && fds_ok && threads_ok;
    return absl::StrFormat(
        "\"soak\":{\"flat\":%s,\"unaccounted_rss_first_third\":%.0f,\"unaccounted_rss_last_third\":%.0f,"
        "\"fds_first_third\":%.1f,\"fds_last_third\":%.1f,\"threads_first_third\":%.1f,"
        "\"threads_last_third\":%.1f,\"p99_us_first_third\":%.0f,\"p99_us_last_third\":%.0f,\"rss_ok\":%s,"
        "\"fds_ok\":%s,\"threads_ok\":%s}",
        *flat ? "true" : "false", u0, u1, f0, f1, t0, t1, p0, p1, rss_ok ? "true" : "false", fds_ok ? "true" : "false",
        threads_ok ? "true" : "false");
  }

  int Report() {
    const Shared& s = *shared_;
    std::string j = "{";
    absl::StrAppendFormat(&j, "\"mode\":\"%s\",\"workers\":%d,\"elapsed_s\":%.1f,\"fault_spec\":\"%s\",", o_.mode,
                          o_.workers, elapsed_s_, o_.fault_spec);
    uint64_t total_ops = 0;
    for (int i = 0; i < kNumOps; ++i) total_ops += s.ops[i].load();
    absl::StrAppendFormat(&j, "\"ops\":%d,\"ops_per_s\":%.1f,", total_ops, total_ops / std::max(elapsed_s_, 1e-3));
    j += "\"latency_us\":{";
    for (int i = 0; i < kNumOps; ++i) {
      const SharedHistogram::Snapshot h = s.latency[i].Take();
      absl::StrAppendFormat(&j, "%s\"%s\":{\"count\":%d,\"errors\":%d,\"p50\":%.0f,\"p99\":%.0f,\"max\":%.0f}",
                            i ? "," : "", OpName(i), h.count, s.errors[i].load(), h.Quantile(0.5), h.Quantile(0.99),
                            h.max_us);
    }
    const SharedHistogram::Snapshot all = s.all_latency.Take();
    absl::StrAppendFormat(&j, ",\"all\":{\"p50\":%.0f,\"p99\":%.0f,\"max\":%.0f}},", all.Quantile(0.5),
                          all.Quantile(0.99), all.max_us);
    const uint64_t must_be_zero[] = {s.wrong_blocks.load(), s.torn_blocks.load(),     s.acked_lost.load(),
                                     s.leaked_pins.load(),  s.leaked_sessions.load(), s.inconsistent.load(),
                                     s.hung_calls.load()};
    absl::StrAppendFormat(&j,
                          "\"must_be_zero\":{\"wrong_blocks\":%d,\"torn_blocks\":%d,\"acked_blocks_lost\":%d,"
                          "\"leaked_pins\":%d,\"leaked_sessions\":%d,\"inconsistent_replies\":%d,\"hung_calls\":%d",
                          must_be_zero[0], must_be_zero[1], must_be_zero[2], must_be_zero[3], must_be_zero[4],
                          must_be_zero[5], must_be_zero[6]);
    uint64_t bad = 0;
    for (uint64_t v : must_be_zero) bad += v;
    if (o_.mode == "crash") {
      const uint64_t audit_bad = s.audit_leaked_bytes.load() + s.audit_overlapping.load() +
                                 s.audit_index_mismatch.load() + s.audit_unreadable.load() + s.audit_corrupt.load() +
                                 s.audit_failures.load() + restart_failures_;
      absl::StrAppendFormat(
          &j,
          ",\"ssd_audit_leaked_bytes\":%d,\"ssd_audit_overlapping\":%d,\"ssd_audit_index_mismatch\":%d,"
          "\"ssd_audit_unreadable\":%d,\"ssd_audit_corrupt\":%d,\"ssd_audit_failures\":%d,"
          "\"restart_failures\":%d",
          s.audit_leaked_bytes.load(), s.audit_overlapping.load(), s.audit_index_mismatch.load(),
          s.audit_unreadable.load(), s.audit_corrupt.load(), s.audit_failures.load(), restart_failures_);
      bad += audit_bad;
    }
    const bool daemon_ok = o_.mode == "crash" || daemon_exit_ == 0;
    if (!daemon_ok) ++bad;
    absl::StrAppendFormat(&j, ",\"daemon_clean_exit\":%d},", daemon_ok ? 0 : 1);
    absl::StrAppendFormat(&j,
                          "\"counts\":{\"blocks_verified\":%d,\"blocks_written\":%d,\"blocks_hit\":%d,\"prompts\":%d,"
                          "\"worker_starts\":%d,\"worker_kills\":%d,\"worker_failures\":%d,\"admin_actions\":%d,"
                          "\"daemon_starts\":%d,\"daemon_blocks_dropped\":%d,\"daemon_checksum_failures\":%d}",
                          s.blocks_verified.load(), s.blocks_written.load(), s.blocks_hit.load(), s.prompts.load(),
                          s.worker_starts.load(), s.worker_kills.load(), worker_failures_, s.admin_actions.load(),
                          daemon_.starts(), s.stats_blocks_dropped.load(), s.stats_checksum_failures.load());
    absl::StrAppendFormat(&j, ",\"admin\":{\"flushes\":%d,\"flush_blocks_not_written\":%d,\"drains\":%d}",
                          s.flushes.load(), s.flush_not_written.load(), s.drains.load());
    absl::StrAppendFormat(&j, ",\"quality\":{\"max_rel_error_served\":%.5f,\"blocks_beyond_one_int8_step\":%d}",
                          static_cast<double>(s.max_rel_error_ppm.load()) / 1e6, s.drift_blocks.load());
    j += ",\"errors_by_code\":{";
    bool first = true;
    for (int c = 0; c < 17; ++c) {
      if (s.error_codes[c].load() == 0) continue;
      absl::StrAppendFormat(&j, "%s\"%s\":%d", first ? "" : ",",
                            absl::StatusCodeToString(static_cast<absl::StatusCode>(c)), s.error_codes[c].load());
      first = false;
    }
    j += "}";
    if (o_.mode == "crash") {
      absl::StrAppendFormat(&j,
                            ",\"crash\":{\"rounds\":%d,\"audits\":%d,\"audited_records\":%d,\"recovery_drops\":%d,"
                            "\"verified_blocks_after_restart\":%d,\"blocks_restored_from_ssd\":%d,"
                            "\"acknowledged_prompts_checked\":%d,\"acknowledged_prompts\":%d,"
                            "\"acknowledged_unverifiable_ssd_full\":%d}",
                            rounds_done_, s.audit_rounds.load(), s.audit_records.load(), s.audit_recovery_drops.load(),
                            s.restart_verified_blocks.load(), s.restart_ssd_restored.load(), s.acked_checked.load(),
                            s.acked_prompts_total.load(), s.acked_unverifiable.load());
    }
    bool flat = true;
    if (o_.mode == "soak") {
      j += "," + SoakVerdict(&flat) + ",\"samples\":[";
      for (size_t i = 0; i < samples_.size(); ++i) {
        const Sample& x = samples_[i];
        absl::StrAppendFormat(&j,
                              "%s{\"t_s\":%.0f,\"rss\":%d,\"threads\":%d,\"fds\":%d,\"gpu_used\":%d,\"host_used\":%d,"
                              "\"ssd_used\":%d,\"pinned_blocks\":%d,\"ops\":%d,\"p99_us\":%.0f}",
                              i ? "," : "", x.t_s, x.rss, x.threads, x.fds, x.gpu_used, x.host_used, x.ssd_used,
                              x.pinned_blocks, x.ops, x.p99_us);
      }
      j += "]";
    }
    const bool pass = bad == 0 && flat && s.blocks_verified.load() > 0;
    absl::StrAppendFormat(&j, ",\"pass\":%s}\n", pass ? "true" : "false");
    std::fputs(j.c_str(), stdout);
    if (!o_.json.empty()) std::ofstream(o_.json) << j;
    if (pass && !o_.keep_dir) {
      std::error_code ec;
      std::filesystem::remove_all(o_.dir, ec);
    }
    return pass ? 0 : 1;
  }

  const Options& o_;
  Shared* shared_;
  Daemon daemon_;
  std::mt19937_64 rng_;
  int next_worker_ = 0;
  int64_t start_ms_ = 0;
  double elapsed_s_ = 0;
  int daemon_exit_ = 0;
  int rounds_done_ = 0;
  int restart_failures_ = 0;
  uint64_t worker_failures_ = 0;
  std::vector<Sample> samples_;
};

}  // namespace
}  // namespace kvtier::stress

int main(int argc, char** argv) {
  using namespace kvtier::stress;
  const kvtier::CliArgs args = kvtier::CliArgs::Parse(argc, argv);
  if (args.Has("help")) {
    std::printf("usage: kvtier-stress --mode=stress|crash|soak --kvtierd=PATH [options] (docs/reliability.md)\n");
    return 0;
  }
  const Options o = Options::FromArgs(args);
  signal(SIGPIPE, SIG_IGN);
  Shared* shared = CreateShared();
  if (shared == nullptr) return 2;
  return Orchestrator(o, shared).Run();
}
