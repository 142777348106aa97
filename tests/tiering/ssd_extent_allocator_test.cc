// ExtentAllocator: sequential next-fit, coalescing on free, rebuild with MarkUsed, draining slabs.
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tiering/ssd/extent_allocator.h"

namespace kvtier {
namespace {

constexpr uint64_t kB = 4096;

TEST(SsdExtentAllocator, FillsSlabsFrontToBackThenWraps) {
  ExtentAllocator a;
  a.AddSlab(0, 10 * kB);
  a.AddSlab(1, 10 * kB);
  auto e1 = a.Allocate(4 * kB);
  auto e2 = a.Allocate(4 * kB);
  ASSERT_TRUE(e1 && e2);
  EXPECT_EQ(*e1, (Extent{0, 0, 4 * kB}));
  EXPECT_EQ(*e2, (Extent{0, 4 * kB, 4 * kB}));
  auto e3 = a.Allocate(4 * kB);  // 2 blocks left in slab 0: next slab
  ASSERT_TRUE(e3);
  EXPECT_EQ(*e3, (Extent{1, 0, 4 * kB}));
  a.Free(*e1);
  auto e4 = a.Allocate(5 * kB);  // cursor continues in slab 1
  ASSERT_TRUE(e4);
  EXPECT_EQ(*e4, (Extent{1, 4 * kB, 5 * kB}));
  auto e5 = a.Allocate(4 * kB);  // nothing after the cursor fits: wraps to slab 0's start
  ASSERT_TRUE(e5);
  EXPECT_EQ(*e5, (Extent{0, 0, 4 * kB}));
  EXPECT_EQ(a.used_bytes(), 17 * kB);
  EXPECT_FALSE(a.Allocate(3 * kB));  // 3 free blocks, but not contiguous (2 + 1)
}

TEST(SsdExtentAllocator, FreeCoalescesNeighbours) {
  ExtentAllocator a;
  a.AddSlab(0, 8 * kB);
  std::vector<Extent> es;
  for (int i = 0; i < 4; ++i) es.push_back(*a.Allocate(2 * kB));
  EXPECT_EQ(a.free_bytes(), 0u);
  a.Free(es[1]);
  a.Free(es[3]);
  a.Free(es[2]);  // joins 1..3
  auto big = a.Allocate(6 * kB);
  ASSERT_TRUE(big);
  EXPECT_EQ(*big, (Extent{0, 2 * kB, 6 * kB}));
}

TEST(SsdExtentAllocator, MarkUsedRejectsOverlapsAndOutOfRange) {
  ExtentAllocator a;
  a.AddSlab(0, 16 * kB);
  EXPECT_TRUE(a.MarkUsed({0, 4 * kB, 4 * kB}));
  EXPECT_FALSE(a.MarkUsed({0, 6 * kB, 4 * kB}));   // overlaps
  EXPECT_FALSE(a.MarkUsed({0, 14 * kB, 4 * kB}));  // past the end
  EXPECT_FALSE(a.MarkUsed({1, 0, kB}));            // no such slab
  EXPECT_TRUE(a.MarkUsed({0, 8 * kB, 8 * kB}));
  EXPECT_EQ(a.used_bytes(), 12 * kB);
  EXPECT_EQ(a.used_in_slab(0), 12 * kB);
}

TEST(SsdExtentAllocator, ExcludedSlabsAreNotUsed) {
  ExtentAllocator a;
  a.AddSlab(0, 4 * kB);
  a.AddSlab(1, 4 * kB);
  ASSERT_TRUE(a.Allocate(4 * kB, /*exclude_from=*/1));
  EXPECT_FALSE(a.Allocate(kB, /*exclude_from=*/1));
  a.RemoveSlab(1);
  EXPECT_EQ(a.capacity_bytes(), 4 * kB);
  EXPECT_EQ(a.free_bytes(), 0u);
}

TEST(SsdExtentAllocator, RandomAllocFreeKeepsAccountingExact) {
  ExtentAllocator a;
  for (uint32_t s = 0; s < 3; ++s) a.AddSlab(s, 256 * kB);
  std::mt19937 rng(7);
  std::vector<Extent> live;
  uint64_t used = 0;
  for (int i = 0; i < 5000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      const uint64_t len = (1 + rng() % 16) * kB;
      if (auto e = a.Allocate(len)) {
        for (const Extent& o : live) {
          ASSERT_TRUE(o.slab != e->slab || o.offset + o.length <= e->offset || e->offset + e->length <= o.offset);
        }
        live.push_back(*e);
        used += len;
      }
    } else {
      const size_t k = rng() % live.size();
      a.Free(live[k]);
      used -= live[k].length;
      live[k] = live.back();
      live.pop_back();
    }
    ASSERT_EQ(a.used_bytes(), used);
  }
  for (const Extent& e : live) a.Free(e);
  EXPECT_EQ(a.used_bytes(), 0u);
  EXPECT_TRUE(a.Allocate(256 * kB));  // fully coalesced again
}

}  // namespace
}  // namespace kvtier
