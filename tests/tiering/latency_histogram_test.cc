// LatencyHistogram: Prometheus bucket semantics and lock-free recording from many threads.
#include "tiering/latency_histogram.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace kvtier {
namespace {

TEST(LatencyHistogram, BucketsAreCumulativeWithInclusiveBounds) {
  LatencyHistogram h;
  h.Record(absl::Microseconds(25));  // exactly the first bound: counts in it
  h.Record(absl::Microseconds(26));  // next bucket
  h.Record(absl::Milliseconds(3));   // <= 5 ms
  h.Record(absl::Seconds(60));       // above every bound: +Inf only
  const LatencyHistogram::Snapshot s = h.Take();
  EXPECT_EQ(s.cumulative[0], 1u);
  EXPECT_EQ(s.cumulative[1], 2u);
  EXPECT_EQ(s.cumulative[6], 2u);  // 2.5 ms
  EXPECT_EQ(s.cumulative[7], 3u);  // 5 ms
  EXPECT_EQ(s.cumulative.back(), 3u);
  EXPECT_EQ(s.count, 4u);
  EXPECT_NEAR(s.sum_seconds, 60.003051, 1e-6);
}

TEST(LatencyHistogram, ConcurrentRecordsAreAllCounted) {
  LatencyHistogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 10000; ++i) h.Record(absl::Microseconds(10 * (t + 1)));
    });
  for (auto& t : threads) t.join();
  const LatencyHistogram::Snapshot s = h.Take();
  EXPECT_EQ(s.count, 40000u);
  EXPECT_EQ(s.cumulative[0], 20000u);  // 10 us and 20 us are <= 25 us
  EXPECT_EQ(s.cumulative[1], 40000u);  // 30 us and 40 us are <= 50 us
  EXPECT_NEAR(s.sum_seconds, 10000 * 100e-6, 1e-9);
}

}  // namespace
}  // namespace kvtier
