#include "tiering/latency_histogram.h"

#include <algorithm>

namespace kvtier {

void LatencyHistogram::Record(absl::Duration d) {
  const double seconds = std::max(0.0, absl::ToDoubleSeconds(d));
  const auto it = std::lower_bound(kBoundsSeconds.begin(), kBoundsSeconds.end(), seconds);
  buckets_[it - kBoundsSeconds.begin()].fetch_add(1, std::memory_order_relaxed);
  sum_nanos_.fetch_add(static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Nanoseconds(d))),
                       std::memory_order_relaxed);
}

LatencyHistogram::Snapshot LatencyHistogram::Take() const {
  Snapshot s;
  uint64_t running = 0;
  for (size_t i = 0; i < kBoundsSeconds.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  running += buckets_[kBoundsSeconds.size()].load(std::memory_order_relaxed);
  s.count = running;
  s.sum_seconds = static_cast<double>(sum_nanos_.load(std::memory_order_relaxed)) * 1e-9;
  return s;
}

}  // namespace kvtier
