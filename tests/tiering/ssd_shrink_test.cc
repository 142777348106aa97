// SsdTier::SetCapacity's relocate_first: the caller's chosen records (BlockStore passes its pinned
// blocks) are moved out of removed slabs before any other, so they are the last to be dropped.
#include "gtest/gtest.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/ssd_tier.h"

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

}  // namespace
}  // namespace kvtier
