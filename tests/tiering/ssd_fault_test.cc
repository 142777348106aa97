// SsdTier under injected disk faults (FaultInjectingIoBackend): I/O errors, a full disk, short and torn
// writes, failed fdatasync, and slow or stuck I/O. In every case the tier keeps serving, fails only the
// records the fault touched, never serves a record that did not verify, and loses nothing it had
// acknowledged. Parameterized over the wrapped backend (io_uring, threads).
#include <algorithm>
#include <cerrno>

#include "gtest/gtest.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/fault_io_backend.h"
#include "tiering/ssd/ssd_tier.h"
#include "tiering/ssd/thread_io_backend.h"
#include "tiering/ssd/uring_io_backend.h"

namespace kvtier {
namespace {

using ssd_test::KeyFor;
using ssd_test::PutRange;
using ssd_test::RecordIsIntact;

constexpr size_t kRecord = 300000;  // spans two 256 KiB I/O blocks

class SsdFaultTest : public ssd_test::TempDirTest, public ::testing::WithParamInterface<bool> {
 protected:
  void OpenTier(absl::Duration timeout = absl::Seconds(10)) {
    std::unique_ptr<IoBackend> base;
    if (GetParam()) {
      auto uring = UringIoBackend::Create(8);
      ASSERT_TRUE(uring.ok()) << uring.status();
      base = *std::move(uring);
    } else {
      base = std::make_unique<ThreadIoBackend>(2, 8);
    }
    auto fake = std::make_unique<FaultInjectingIoBackend>(std::move(base));
    fake_ = fake.get();
    SsdTierOptions o = SmallOptions();
    o.io_timeout = timeout;
    o.durability = durability_;
    auto t = SsdTier::Open(o, std::move(fake));
    ASSERT_TRUE(t.ok()) << t.status();
    tier_ = *std::move(t);
  }
  void TearDown() override {
    tier_.reset();
    TempDirTest::TearDown();
  }
  // Keys [first, first+count) that are served intact.
  int Intact(uint64_t first, int count) {
    std::vector<BlockKey> keys;
    for (int i = 0; i < count; ++i) keys.push_back(KeyFor(first + i));
    int n = 0;
    for (const auto& r : tier_->Get(keys)) n += r.ok() && RecordIsIntact(*r);
    return n;
  }

  SsdDurability durability_ = SsdDurability::kPowerLoss;
  FaultInjectingIoBackend* fake_ = nullptr;
  std::unique_ptr<SsdTier> tier_;
};

INSTANTIATE_TEST_SUITE_P(Backends, SsdFaultTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "IoUring" : "Threads"; });

TEST_P(SsdFaultTest, WriteErrorFailsOnlyTheRecordItHitAndKeepsServing) {
  OpenTier();
  for (const absl::Status& s : PutRange(*tier_, 0, 4, kRecord)) ASSERT_TRUE(s.ok()) << s;
  fake_->AddRule({.kind = IoKind::kWrite, .count = 1, .action = FaultAction::kError, .error = EIO});
  std::vector<absl::Status> r = PutRange(*tier_, 10, 3, kRecord);  // one stream; its first op fails
  EXPECT_EQ(r[0].code(), absl::StatusCode::kUnavailable) << r[0];
  EXPECT_TRUE(r[1].ok()) << r[1];
  EXPECT_TRUE(r[2].ok()) << r[2];
  EXPECT_FALSE(tier_->Contains(KeyFor(10)));
  EXPECT_EQ(Intact(0, 4), 4);
  EXPECT_EQ(Intact(11, 2), 2);
  const SsdTierStats st = tier_->Stats();
  EXPECT_EQ(st.io_errors, 1u);
  EXPECT_EQ(st.write_drops, 1u);
  EXPECT_EQ(st.records, 6u);
}

TEST_P(SsdFaultTest, DiskFullDropsAndCountsTheRecordsThatCouldNotBeWritten) {
  OpenTier();
  for (const absl::Status& s : PutRange(*tier_, 0, 3, kRecord)) ASSERT_TRUE(s.ok()) << s;
  const uint64_t used = tier_->Stats().used_bytes;
  fake_->AddRule({.kind = IoKind::kWrite, .count = -1, .action = FaultAction::kError, .error = ENOSPC});
  for (const absl::Status& s : PutRange(*tier_, 10, 3, kRecord)) {
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  }
  EXPECT_GE(tier_->Stats().enospc_drops, 1u);
  EXPECT_EQ(tier_->Stats().write_drops, 3u);
  EXPECT_EQ(tier_->Stats().used_bytes, used);  // the failed records' space is free again
  EXPECT_EQ(Intact(0, 3), 3);
  fake_->ClearRules();
  for (const absl::Status& s : PutRange(*tier_, 10, 3, kRecord)) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(Intact(10, 3), 3);
}

TEST_P(SsdFaultTest, ShortWriteFailsTheRecord) {
  OpenTier();
  fake_->AddRule({.kind = IoKind::kWrite, .count = 1, .action = FaultAction::kShortWrite, .bytes = 8192});
  std::vector<absl::Status> r = PutRange(*tier_, 0, 1, kRecord);
  EXPECT_EQ(r[0].code(), absl::StatusCode::kUnavailable) << r[0];
  EXPECT_FALSE(tier_->Contains(KeyFor(0)));
  EXPECT_TRUE(PutRange(*tier_, 1, 1, kRecord)[0].ok());
  EXPECT_EQ(Intact(1, 1), 1);
}

TEST_P(SsdFaultTest, TornWriteAcknowledgedByALyingDiskIsNeverServed) {
  OpenTier();
  for (const absl::Status& s : PutRange(*tier_, 0, 2, kRecord)) ASSERT_TRUE(s.ok()) << s;
  // The second op of the next record reaches the disk only in part but is reported complete.
  fake_->AddRule({.kind = IoKind::kWrite, .skip = 1, .count = 1, .action = FaultAction::kTornWrite, .bytes = 4096});
  ASSERT_TRUE(PutRange(*tier_, 5, 1, kRecord)[0].ok());
  const BlockKey k[] = {KeyFor(5)};
  auto r = tier_->Get(k);
  EXPECT_EQ(r[0].status().code(), absl::StatusCode::kDataLoss) << r[0].status();
  EXPECT_EQ(tier_->Stats().checksum_failures, 1u);
  EXPECT_FALSE(tier_->Contains(KeyFor(5)));
  EXPECT_EQ(Intact(0, 2), 2);
}

TEST_P(SsdFaultTest, FailedFdatasyncFailsTheBatchAndIndexesNothing) {
  OpenTier();
  fake_->AddRule({.kind = IoKind::kSync, .count = 1, .action = FaultAction::kError, .error = EIO});
  for (const absl::Status& s : PutRange(*tier_, 0, 3, kRecord)) EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(tier_->Stats().records, 0u);
  EXPECT_EQ(tier_->Stats().used_bytes, 0u);
  for (const absl::Status& s : PutRange(*tier_, 0, 3, kRecord)) EXPECT_TRUE(s.ok()) << s;
  tier_.reset();
  OpenTier();
  EXPECT_EQ(Intact(0, 3), 3);
}

TEST_P(SsdFaultTest, ProcessCrashDurabilityIssuesNoFdatasync) {
  durability_ = SsdDurability::kProcessCrash;
  OpenTier();
  // Every sync fails: with process-crash durability the tier never issues one, so the Puts succeed.
  fake_->AddRule({.kind = IoKind::kSync, .count = -1, .action = FaultAction::kError, .error = EIO});
  for (const absl::Status& s : PutRange(*tier_, 0, 3, kRecord)) EXPECT_TRUE(s.ok()) << s;
  tier_.reset();
  OpenTier();
  EXPECT_EQ(Intact(0, 3), 3);
}

TEST_P(SsdFaultTest, ReadErrorIsUnavailableAndTheRecordStays) {
  OpenTier();
  ASSERT_TRUE(PutRange(*tier_, 0, 1, kRecord)[0].ok());
  fake_->AddRule({.kind = IoKind::kRead, .count = 1, .action = FaultAction::kError, .error = EIO});
  const BlockKey k[] = {KeyFor(0)};
  EXPECT_EQ(tier_->Get(k)[0].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(tier_->Stats().io_errors, 1u);
  EXPECT_EQ(Intact(0, 1), 1);
}

TEST_P(SsdFaultTest, SlowCompletionsWithinTheTimeoutSucceed) {
  OpenTier(absl::Seconds(5));
  fake_->AddRule({.kind = IoKind::kWrite, .count = 2, .action = FaultAction::kDelay, .delay = absl::Milliseconds(50)});
  fake_->AddRule({.kind = IoKind::kRead, .count = 2, .action = FaultAction::kDelay, .delay = absl::Milliseconds(50)});
  for (const absl::Status& s : PutRange(*tier_, 0, 2, kRecord)) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(Intact(0, 2), 2);
  EXPECT_EQ(fake_->faults_injected(), 4);
}

TEST_P(SsdFaultTest, StuckDiskTimesOutReadsAndWritesInsteadOfHanging) {
  // 1 s: long enough that the healthy puts around the stuck phase never time out on a loaded CI host.
  OpenTier(absl::Seconds(1));
  for (const absl::Status& s : PutRange(*tier_, 0, 2, kRecord)) ASSERT_TRUE(s.ok()) << s;
  const uint64_t used = tier_->Stats().used_bytes;
  fake_->AddRule({.kind = IoKind::kRead, .count = -1, .action = FaultAction::kHang});
  fake_->AddRule({.kind = IoKind::kWrite, .count = -1, .action = FaultAction::kHang});
  const absl::Time start = absl::Now();
  const BlockKey k[] = {KeyFor(0), KeyFor(1)};
  for (const auto& r : tier_->Get(k)) EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  for (const absl::Status& s : PutRange(*tier_, 5, 2, kRecord)) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  }
  // Later calls time out too (the disk is still stuck), instead of waiting forever.
  for (const auto& r : tier_->Get(k)) EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));  // three timed-out calls, not a hang
  EXPECT_TRUE(tier_->Contains(KeyFor(0)));  // unavailable, not lost
  EXPECT_GE(tier_->Stats().timeouts, 3u);
  // The stuck writes still own their space until the disk answers.
  EXPECT_GT(tier_->Stats().used_bytes, used);
  fake_->ClearRules();
  fake_->ReleaseHung();
  EXPECT_EQ(tier_->Stats().used_bytes, used);
  EXPECT_EQ(Intact(0, 2), 2);
  for (const absl::Status& s : PutRange(*tier_, 5, 2, kRecord)) EXPECT_TRUE(s.ok()) << s;
}

TEST_P(SsdFaultTest, GetIntoNeverWritesTheCallersBufferAfterATimeout) {
  OpenTier(absl::Milliseconds(400));  // the healthy put and read must fit in it on a loaded CI host
  ASSERT_TRUE(PutRange(*tier_, 0, 1, kRecord)[0].ok());
  // The reads reach the disk but complete (and would copy into the buffer) long after the deadline.
  fake_->AddRule({.kind = IoKind::kRead, .count = -1, .action = FaultAction::kDelay, .delay = absl::Milliseconds(1200)});
  std::string buf(kRecord, '\0');
  const std::span<uint8_t> spans[] = {{reinterpret_cast<uint8_t*>(buf.data()), buf.size()}};
  const BlockKey keys[] = {KeyFor(0)};
  EXPECT_EQ(tier_->GetInto(keys, spans)[0].status().code(), absl::StatusCode::kDeadlineExceeded);
  buf.assign(kRecord, 'S');                 // the caller reuses its buffer at once
  absl::SleepFor(absl::Milliseconds(2000));  // the late completions have run by now
  EXPECT_EQ(std::count(buf.begin(), buf.end(), 'S'), static_cast<std::ptrdiff_t>(kRecord));
  fake_->ClearRules();
  auto r = tier_->GetInto(keys, spans);
  ASSERT_TRUE(r[0].ok()) << r[0].status();
  EXPECT_TRUE(buf == ssd_test::PayloadFor(KeyFor(0), kRecord));
}

}  // namespace
}  // namespace kvtier
