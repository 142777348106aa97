#include "tiering/block_key.h"

#include <gtest/gtest.h>

#include <vector>

namespace kvtier {
namespace {

TEST(BlockKey, ChainDependsOnEveryInput) {
  std::vector<int32_t> t(16);
  for (int i = 0; i < 16; ++i) t[i] = 1000 + i;
  const BlockKey a = ChainKey({}, 7, "tenant-a", t);
  EXPECT_EQ(a, ChainKey({}, 7, "tenant-a", t));
  EXPECT_NE(a, ChainKey({}, 8, "tenant-a", t));              // layout
  EXPECT_NE(a, ChainKey({}, 7, "tenant-b", t));              // tenant salt
  EXPECT_NE(a, ChainKey(BlockKey{1, 0}, 7, "tenant-a", t));  // parent
  t[15] = 0;
  EXPECT_NE(a, ChainKey({}, 7, "tenant-a", t));  // tokens
}

TEST(BlockKey, BytesRoundTrip) {
  const BlockKey k{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  BlockKey back;
  ASSERT_TRUE(BlockKey::FromBytes(k.ToBytes(), &back));
  EXPECT_EQ(back, k);
  EXPECT_FALSE(BlockKey::FromBytes("short", &back));
  EXPECT_EQ(k.ToHex(), "fedcba98765432100123456789abcdef");
}

}  // namespace
}  // namespace kvtier
