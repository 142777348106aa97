// SsdTier::Audit: clean on a healthy tier (before and after reopen), and it notices what it exists to
// notice: a record whose bytes on disk no longer verify.
#include <fcntl.h>
#include <unistd.h>

#include "gtest/gtest.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/slab_file.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier {
namespace {

using ssd_test::PutRange;

class SsdAuditTest : public ssd_test::TempDirTest {};

TEST_F(SsdAuditTest, HealthyTierIsCleanBeforeAndAfterReopen) {
  {
    auto tier = SsdTier::Open(SmallOptions());
    ASSERT_TRUE(tier.ok()) << tier.status();
    for (const auto& s : PutRange(**tier, 0, 40, 20000)) ASSERT_TRUE(s.ok()) << s;
    std::vector<BlockKey> gone = {ssd_test::KeyFor(3), ssd_test::KeyFor(7)};
    ASSERT_TRUE((*tier)->Remove(gone).ok());
    auto a = (*tier)->Audit(true);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_TRUE(a->clean());
    EXPECT_EQ(a->records, 38u);
    EXPECT_EQ(a->record_bytes, a->allocator_used_bytes);
  }
  auto tier = SsdTier::Open(SmallOptions());
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto a = (*tier)->Audit(true);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->clean());
  EXPECT_EQ(a->records, 38u);
}

TEST_F(SsdAuditTest, FindsARecordCorruptedOnDisk) {
  auto tier = SsdTier::Open(SmallOptions());
  ASSERT_TRUE(tier.ok()) << tier.status();
  for (const auto& s : PutRange(**tier, 0, 4, 20000)) ASSERT_TRUE(s.ok()) << s;
  // Flip bytes in the middle of the first record's payload (slab 0, offset 0 holds the first record).
  const std::string slab = dir_ + "/" + SlabFile::FileName(0);
  const int fd = open(slab.c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << slab;
  const char junk[16] = "corrupt-corrupt";
  ASSERT_EQ(pwrite(fd, junk, sizeof junk, 8192), static_cast<ssize_t>(sizeof junk));
  fsync(fd);
  close(fd);
  auto a = (*tier)->Audit(true);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->corrupt, 1u);
  EXPECT_FALSE(a->clean());
}

}  // namespace
}  // namespace kvtier
