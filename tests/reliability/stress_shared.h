// The stress driver's shared state: one anonymous MAP_SHARED region created by the orchestrator before
// it forks any child, so that counters survive a worker killed with SIGKILL (whatever it counted before
// dying is already in the region). Everything in it is a lock-free atomic.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <new>

namespace kvtier::stress {

// Latency histogram: 4 buckets per power of two of microseconds, 1 us .. ~2^31 us.
class SharedHistogram {
 public:
  static constexpr int kBuckets = 4 * 32;
  void Record(double us) {
    count_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t ns = static_cast<uint64_t>(us * 1000);
    uint64_t prev = max_ns_.load(std::memory_order_relaxed);
    while (ns > prev && !max_ns_.compare_exchange_weak(prev, ns, std::memory_order_relaxed)) {
    }
    buckets_[Bucket(us)].fetch_add(1, std::memory_order_relaxed);
  }
  // A copy of the counts (for interval percentiles: subtract an earlier snapshot).
  struct Snapshot {
    uint64_t buckets[kBuckets] = {};
    uint64_t count = 0;
    double max_us = 0;
    Snapshot operator-(const Snapshot& o) const {
      Snapshot d;
      for (int i = 0; i < kBuckets; ++i) d.buckets[i] = buckets[i] - o.buckets[i];
      d.count = count - o.count;
      d.max_us = max_us;
      return d;
    }
    // Upper edge of the bucket holding quantile q (0 when empty).
    double Quantile(double q) const {
      if (count == 0) return 0;
      const uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count)));
      uint64_t seen = 0;
      for (int i = 0; i < kBuckets; ++i) {
        seen += buckets[i];
        if (seen >= std::max<uint64_t>(rank, 1)) return UpperEdge(i);
      }
      return max_us;
    }
  };
  Snapshot Take() const {
    Snapshot s;
    for (int i = 0; i < kBuckets; ++i) s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
    s.count = count_.load(std::memory_order_relaxed);
    s.max_us = static_cast<double>(max_ns_.load(std::memory_order_relaxed)) / 1000;
    return s;
  }

 private:
  static int Bucket(double us) {
    if (us < 1) return 0;
    int e = 0;
    const double m = std::frexp(us, &e);  // us = m * 2^e, m in [0.5, 1)
    const int sub = std::min(3, static_cast<int>((m - 0.5) * 8));
    return std::clamp(4 * (e - 1) + sub, 0, kBuckets - 1);
  }
  static double UpperEdge(int b) { return std::ldexp(0.5 + 0.125 * (b % 4 + 1), b / 4 + 1); }

  std::atomic<uint64_t> buckets_[kBuckets] = {};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> max_ns_{0};
};

enum Op { kLookup, kRead, kWrite, kRelease, kAdmin, kNumOps };
inline const char* OpName(int op) {
  static const char* kNames[] = {"lookup", "read", "write", "release", "admin"};
  return kNames[op];
}

struct Shared {
  // Must stay zero.
  std::atomic<uint64_t> wrong_blocks{0};  // served block is entirely some other content
  std::atomic<uint64_t> torn_blocks{0};   // served block partly right, partly not
  std::atomic<uint64_t> acked_lost{0};    // pinned/acknowledged blocks a lookup no longer finds
  std::atomic<uint64_t> leaked_pins{0};   // pins still held by sessions of dead processes
  std::atomic<uint64_t> leaked_sessions{0};
  std::atomic<uint64_t> inconsistent{0};  // a reply contradicting itself (matched_tokens vs blocks)
  std::atomic<uint64_t> hung_calls{0};    // calls that ran past the hang limit
  // Activity.
  std::atomic<uint64_t> ops[kNumOps] = {};
  std::atomic<uint64_t> errors[kNumOps] = {};  // calls failed with a status (allowed: counted)
  std::atomic<uint64_t> error_codes[17] = {};  // the same, by absl::StatusCode
  // Quantization quality of what was served (informative): the worst error relative to the segment's
  // absmax, in millionths, and blocks beyond one int8 step (re-quantization drift after repeated moves).
  std::atomic<uint64_t> max_rel_error_ppm{0};
  std::atomic<uint64_t> drift_blocks{0};
  std::atomic<uint64_t> blocks_verified{0}, blocks_written{0}, blocks_hit{0}, prompts{0};
  std::atomic<uint64_t> worker_starts{0}, worker_kills{0}, admin_actions{0};
  SharedHistogram latency[kNumOps];
  SharedHistogram all_latency;
  // Operator samples (soak): the daemon's own accounting.
  std::atomic<uint64_t> stats_gpu_used{0}, stats_host_used{0}, stats_ssd_used{0}, stats_pinned_blocks{0};
  std::atomic<uint64_t> stats_host_capacity{0}, stats_blocks_dropped{0}, stats_checksum_failures{0};
  std::atomic<uint64_t> stats_sessions{0};
  // Killed worker pids and when (steady ms; and unix ms, to tell the killed worker's session from that
  // of a later process that got the same pid), for the operator's leak check: a ring.
  static constexpr int kKilled = 256;
  std::atomic<int64_t> killed_pid[kKilled] = {};
  std::atomic<int64_t> killed_at_ms[kKilled] = {};
  std::atomic<int64_t> killed_at_unix_ms[kKilled] = {};
  std::atomic<uint64_t> killed_next{0};
  // Crash mode: prompts whose blocks the daemon acknowledged as durable (Flush), by prompt id.
  static constexpr int kAcked = 4096;
  std::atomic<uint64_t> acked_prompt[kAcked] = {};  // prompt id + 1; 0 = empty
  std::atomic<uint64_t> acked_blocks[kAcked] = {};
  std::atomic<uint64_t> acked_next{0};
  std::atomic<uint64_t> ssd_used_max_since_ack{0};  // SSD fill since the last ack (copies shed when full)
  std::atomic<uint64_t> acked_prompts_total{0}, acked_unverifiable{0}, flushes{0}, flush_not_written{0};
  std::atomic<uint64_t> drains{0};
  // Crash mode: results of the SSD audit and post-restart verification.
  std::atomic<uint64_t> audit_rounds{0}, audit_records{0}, audit_leaked_bytes{0}, audit_overlapping{0};
  std::atomic<uint64_t> audit_index_mismatch{0}, audit_unreadable{0}, audit_corrupt{0}, audit_recovery_drops{0};
  std::atomic<uint64_t> audit_failures{0};
  std::atomic<uint64_t> restart_verified_blocks{0}, restart_ssd_restored{0}, acked_checked{0};
  std::atomic<int> stop{0};
};

inline Shared* CreateShared() {
  void* p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  return new (p) Shared();
}

}  // namespace kvtier::stress
