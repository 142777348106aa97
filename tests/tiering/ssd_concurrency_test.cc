// SsdTier under concurrent Put, Get, Remove, Contains and capacity changes from several threads (run
// it under TSan: cmake --preset tsan). Each thread owns a key range and checks every record it gets
// back against its key; one thread also reads the other threads' keys, so reads race with writes and
// removes of the same keys. No assertions inside the threads: they count, the test body asserts.
#include <atomic>
#include <thread>

#include "gtest/gtest.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier {
namespace {

using ssd_test::KeyFor;
using ssd_test::PutRange;
using ssd_test::RecordIsIntact;

class SsdConcurrencyTest : public ssd_test::TempDirTest, public ::testing::WithParamInterface<bool> {};

INSTANTIATE_TEST_SUITE_P(Backends, SsdConcurrencyTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "IoUring" : "Threads"; });

TEST_P(SsdConcurrencyTest, ConcurrentPutGetRemoveNeverServeAWrongRecord) {
  SsdTierOptions o = SmallOptions();
  o.use_io_uring = GetParam();
  o.capacity_bytes = 24 << 20;
  o.compression = SsdCompression::kAuto;
  o.worker_threads = 2;
  auto t = SsdTier::Open(o);
  ASSERT_TRUE(t.ok()) << t.status();
  SsdTier& tier = **t;

  constexpr int kWriters = 3;
  constexpr int kRounds = 12;
  struct Counts {
    int puts_ok = 0, puts_full = 0, puts_other = 0;
    int gets_ok = 0, gets_bad = 0, own_missing = 0;
  };
  std::vector<Counts> counts(kWriters + 1);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      Counts& c = counts[w];
      const uint64_t base = 1000 * (w + 1);
      for (int round = 0; round < kRounds; ++round) {
        const uint64_t first = base + (round % 4) * 4;  // keys are rewritten every 4 rounds
        const size_t size = 20000 + 37000 * ((w + round) % 5);
        const bool compressible = (round % 2) == 0;
        std::vector<absl::Status> st = PutRange(tier, first, 4, size, compressible);
        std::vector<BlockKey> keys;
        for (int i = 0; i < 4; ++i) {
          if (st[i].ok()) {
            ++c.puts_ok;
            keys.push_back(KeyFor(first + i));
          } else if (st[i].code() == absl::StatusCode::kResourceExhausted) {
            ++c.puts_full;
          } else {
            ++c.puts_other;
          }
        }
        // Our own keys, just written, must come back intact (nobody else removes them).
        for (const auto& r : tier.Get(keys)) {
          if (!r.ok()) {
            ++c.own_missing;
          } else if (r->payload.size() == size && RecordIsIntact(*r, compressible)) {
            ++c.gets_ok;
          } else {
            ++c.gets_bad;
          }
        }
        if (round % 3 == 2) (void)tier.Remove(keys);
      }
    });
  }
  // A reader and remover of everyone's keys; any record it gets must verify against its key.
  threads.emplace_back([&] {
    Counts& c = counts[kWriters];
    uint64_t s = 42;
    while (!stop.load()) {
      std::vector<BlockKey> keys;
      for (int i = 0; i < 8; ++i) keys.push_back(KeyFor(1000 * (1 + ssd_test::SplitMix(s) % kWriters) + s % 16));
      for (const auto& r : tier.Get(keys)) {
        if (!r.ok()) continue;
        // Either compressibility, whichever round wrote it.
        if (RecordIsIntact(*r, true) || RecordIsIntact(*r, false)) {
          ++c.gets_ok;
        } else {
          ++c.gets_bad;
        }
      }
      (void)tier.Contains(keys[0]);
      (void)tier.Stats();
    }
  });
  for (int w = 0; w < kWriters; ++w) threads[w].join();
  stop.store(true);
  threads.back().join();

  Counts sum;
  for (const Counts& c : counts) {
    sum.puts_ok += c.puts_ok;
    sum.puts_full += c.puts_full;
    sum.puts_other += c.puts_other;
    sum.gets_ok += c.gets_ok;
    sum.gets_bad += c.gets_bad;
    sum.own_missing += c.own_missing;
  }
  EXPECT_EQ(sum.gets_bad, 0);
  EXPECT_EQ(sum.own_missing, 0);
  EXPECT_EQ(sum.puts_other, 0);
  EXPECT_EQ(sum.puts_ok + sum.puts_full, kWriters * kRounds * 4);
  EXPECT_GT(sum.puts_ok, kWriters * kRounds * 2);
  EXPECT_EQ(tier.Stats().checksum_failures, 0u);
  // The index and the allocator agree once the dust settles.
  auto list = tier.ListEntries();
  ASSERT_TRUE(list.ok());
  uint64_t referenced = 0;
  for (const SsdEntryInfo& e : *list) referenced += e.extent_bytes;
  EXPECT_EQ(tier.Stats().used_bytes, referenced);
  EXPECT_EQ(tier.Stats().records, list->size());
}

TEST_P(SsdConcurrencyTest, ShrinkWhilePuttingKeepsIndexAndSpaceConsistent) {
  SsdTierOptions o = SmallOptions();
  o.use_io_uring = GetParam();
  auto t = SsdTier::Open(o);
  ASSERT_TRUE(t.ok()) << t.status();
  SsdTier& tier = **t;
  std::atomic<int> bad{0};
  std::thread writer([&] {
    for (int round = 0; round < 20; ++round) {
      for (const absl::Status& s : PutRange(tier, round * 2, 2, 200000)) {
        if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted && s.code() != absl::StatusCode::kUnavailable) {
          ++bad;
        }
      }
    }
  });
  absl::StatusOr<SsdCapacityChange> a = tier.SetCapacity(8 << 20);
  absl::StatusOr<SsdCapacityChange> b = tier.SetCapacity(16 << 20);
  writer.join();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(bad.load(), 0);
  auto list = tier.ListEntries();
  ASSERT_TRUE(list.ok());
  std::vector<BlockKey> keys;
  uint64_t referenced = 0;
  for (const SsdEntryInfo& e : *list) {
    keys.push_back(e.key);
    referenced += e.extent_bytes;
  }
  for (const auto& r : tier.Get(keys)) EXPECT_TRUE(r.ok() && RecordIsIntact(*r)) << r.status();
  EXPECT_EQ(tier.Stats().used_bytes, referenced);
}

}  // namespace
}  // namespace kvtier
