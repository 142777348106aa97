// SsdTier::SetCapacity when it shrinks. kDropWhatDoesNotFit with relocate_first: the caller's chosen
// records are moved out of removed slabs before any other, so they are the last to be dropped.
// kKeepRecords (what BlockStore uses): no readable record is ever dropped; the tier stops above the
// requested size at the first slab holding a record that cannot move.
#include <algorithm>
#include <filesystem>

#include "gtest/gtest.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/fault_io_backend.h"
#include "tiering/ssd/ssd_tier.h"
#include "tiering/ssd/thread_io_backend.h"

namespace kvtier {
namespace {

using ssd_test::KeyFor;
using ssd_test::PutRange;

class SsdShrinkTest : public ssd_test::TempDirTest {};

TEST_F(SsdShrinkTest, RelocateFirstKeysSurviveAShrinkThatDropsNewerRecords) {
  SsdTierOptions o = SmallOptions();  // 4 slabs of 4 MiB: three 1 MiB records each
  auto tier = SsdTier::Open(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  for (const absl::Status& s : PutRange(**tier, 0, 12, 1 << 20)) ASSERT_TRUE(s.ok()) << s;
  const BlockKey gone[] = {KeyFor(0), KeyFor(1), KeyFor(2), KeyFor(3)};
  ASSERT_EQ(*(*tier)->Remove(gone), 4);  // room for 4 in the two slabs that stay
  // Without a preference the 4 newest (8..11) would move and 6, 7 would be dropped.
  const BlockKey first[] = {KeyFor(6), KeyFor(7)};
  auto c = (*tier)->SetCapacity(8 << 20, first);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->relocated, 4);
  ASSERT_EQ(c->dropped.size(), 2u);
  EXPECT_TRUE((*tier)->Contains(KeyFor(6)));
  EXPECT_TRUE((*tier)->Contains(KeyFor(7)));
  std::vector<BlockKey> keys = {KeyFor(6), KeyFor(7)};
  for (const auto& r : (*tier)->Get(keys)) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(ssd_test::RecordIsIntact(*r));
  }
  for (const BlockKey& k : c->dropped) EXPECT_TRUE(k == KeyFor(8) || k == KeyFor(9)) << k.ToHex();
}

// Every record of keys [first, first + count) is present and intact.
void ExpectIntact(SsdTier& tier, uint64_t first, int count) {
  std::vector<BlockKey> keys;
  for (int i = 0; i < count; ++i) keys.push_back(KeyFor(first + i));
  const auto got = tier.Get(keys);
  for (int i = 0; i < count; ++i) {
    ASSERT_TRUE(got[i].ok()) << "record " << first + i << ": " << got[i].status();
    EXPECT_TRUE(ssd_test::RecordIsIntact(*got[i])) << "record " << first + i;
  }
}

TEST_F(SsdShrinkTest, KeepRecordsShrinksAllTheWayWhenEverythingFits) {
  auto tier = SsdTier::Open(SmallOptions());  // 4 slabs of 4 MiB: three 1 MiB records each
  ASSERT_TRUE(tier.ok()) << tier.status();
  for (const absl::Status& s : PutRange(**tier, 0, 12, 1 << 20)) ASSERT_TRUE(s.ok()) << s;
  std::vector<BlockKey> gone;
  for (int i = 0; i < 6; ++i) gone.push_back(KeyFor(i));
  ASSERT_EQ(*(*tier)->Remove(gone), 6);  // slabs 0 and 1 empty: room for the six records of slabs 2, 3
  auto c = (*tier)->SetCapacity(8 << 20, {}, SsdShrinkMode::kKeepRecords);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->capacity_bytes, 8u << 20);
  EXPECT_EQ(c->relocated, 6);
  EXPECT_TRUE(c->dropped.empty());
  EXPECT_TRUE(c->kept_in_place.empty());
  ExpectIntact(**tier, 6, 6);
}

// Room for only three of the six records above the new size: the highest slab moves, the next one stays
// (with its records where they are) instead of losing them, and the tier says how far it got.
TEST_F(SsdShrinkTest, KeepRecordsStopsAtTheFirstSlabWhoseRecordsDoNotFit) {
  auto tier = SsdTier::Open(SmallOptions());
  ASSERT_TRUE(tier.ok()) << tier.status();
  for (const absl::Status& s : PutRange(**tier, 0, 12, 1 << 20)) ASSERT_TRUE(s.ok()) << s;
  std::vector<BlockKey> gone;
  for (int i = 0; i < 6; ++i) gone.push_back(KeyFor(i));
  ASSERT_EQ(*(*tier)->Remove(gone), 6);
  auto c = (*tier)->SetCapacity(4 << 20, {}, SsdShrinkMode::kKeepRecords);  // one slab: room for three
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->capacity_bytes, 12u << 20) << "slab 2 holds records that do not fit in slab 0";
  EXPECT_EQ(c->relocated, 3);
  EXPECT_TRUE(c->dropped.empty());
  ASSERT_EQ(c->kept_in_place_bytes.size(), 3u);
  for (uint64_t b : c->kept_in_place_bytes) EXPECT_GE(b, 1u << 20);  // a whole 1 MiB record (+ header)
  std::vector<BlockKey> kept = c->kept_in_place;
  std::sort(kept.begin(), kept.end(), [](const BlockKey& a, const BlockKey& b) { return a.lo < b.lo; });
  std::vector<BlockKey> want = {KeyFor(6), KeyFor(7), KeyFor(8)};
  std::sort(want.begin(), want.end(), [](const BlockKey& a, const BlockKey& b) { return a.lo < b.lo; });
  EXPECT_EQ(kept, want);
  ExpectIntact(**tier, 6, 6);
  EXPECT_EQ((*tier)->Stats().records, 6u);
  // The kept slabs take new records again (the shrink's allocation limit is gone).
  for (const absl::Status& s : PutRange(**tier, 100, 3, 1 << 20)) EXPECT_TRUE(s.ok()) << s;
  // The same shrink with the old policy drops the three records instead.
  auto d = (*tier)->SetCapacity(4 << 20);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->capacity_bytes, 4u << 20);
  EXPECT_FALSE(d->dropped.empty());
}

// A record whose read fails during the move (an I/O error, not corruption) is kept where it is: its slab
// stays. kDropWhatDoesNotFit drops it.
TEST_F(SsdShrinkTest, KeepRecordsKeepsARecordWhoseReadFails) {
  for (const SsdShrinkMode mode : {SsdShrinkMode::kKeepRecords, SsdShrinkMode::kDropWhatDoesNotFit}) {
    SCOPED_TRACE(mode == SsdShrinkMode::kKeepRecords ? "keep" : "drop");
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    auto fake = std::make_unique<FaultInjectingIoBackend>(std::make_unique<ThreadIoBackend>(2, 8));
    FaultInjectingIoBackend* faults = fake.get();
    auto tier = SsdTier::Open(SmallOptions(), std::move(fake));
    ASSERT_TRUE(tier.ok()) << tier.status();
    for (const absl::Status& s : PutRange(**tier, 0, 6, 1 << 20)) ASSERT_TRUE(s.ok()) << s;
    std::vector<BlockKey> gone = {KeyFor(0), KeyFor(1), KeyFor(2)};
    ASSERT_EQ(*(*tier)->Remove(gone), 3);  // slab 0 empty; 3, 4, 5 in slab 1
    faults->AddRule({.kind = IoKind::kRead, .skip = 0, .count = 1, .action = FaultAction::kError});
    auto c = (*tier)->SetCapacity(4 << 20, {}, mode);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(faults->faults_injected(), 1);
    if (mode == SsdShrinkMode::kKeepRecords) {
      EXPECT_EQ(c->capacity_bytes, 8u << 20);
      EXPECT_TRUE(c->dropped.empty());
      EXPECT_EQ(c->relocated, 2);
      EXPECT_EQ(c->kept_in_place.size(), 1u);
      ExpectIntact(**tier, 3, 3);
    } else {
      EXPECT_EQ(c->capacity_bytes, 4u << 20);
      EXPECT_EQ(c->dropped.size(), 1u);
    }
    tier->reset();
  }
}

}  // namespace
}  // namespace kvtier
