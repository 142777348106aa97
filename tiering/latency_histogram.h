// LatencyHistogram: a fixed-bucket histogram of operation durations that hot paths record into without
// taking a lock, and that a metrics exporter snapshots at scrape time.
//
// Buckets are cumulative-friendly upper bounds in seconds (Prometheus `le` semantics: an observation
// of exactly a bound counts in that bucket). The bounds span 25 us .. 10 s in roughly x2.5 steps, which
// covers a one-block host copy through a large SSD batch; anything slower lands in +Inf.
//
// Thread-safety: Record and Snapshot may run concurrently from any threads. A snapshot taken while
// records are in flight may miss some of them, or count one in the buckets before its time is in the sum,
// which Prometheus tolerates; the count is the sum of the buckets, and every value only ever grows.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <span>

#include "absl/time/time.h"

namespace kvtier {

class LatencyHistogram {
 public:
  static constexpr std::array<double, 13> kBoundsSeconds = {25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3,
                                                            5e-3,  10e-3, 25e-3,  100e-3, 1.0,    10.0};

  struct Snapshot {
    // cumulative[i]: observations <= kBoundsSeconds[i]; the +Inf bucket is `count`.
    std::array<uint64_t, kBoundsSeconds.size()> cumulative{};
    uint64_t count = 0;
    double sum_seconds = 0;
  };

  void Record(absl::Duration d);
  Snapshot Take() const;

 private:
  std::array<std::atomic<uint64_t>, kBoundsSeconds.size() + 1> buckets_{};  // last: above every bound
  std::atomic<uint64_t> sum_nanos_{0};
};

// The block store's movement latencies, one observation per device or SSD batch.
struct MoveLatencies {
  LatencyHistogram page_out;   // GPU -> host transcode batches
  LatencyHistogram page_in;    // host -> GPU transcode batches
  LatencyHistogram ssd_write;  // host -> SSD batches
  LatencyHistogram ssd_read;   // SSD -> host batches (read and verify)
};

}  // namespace kvtier
