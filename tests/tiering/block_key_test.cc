#include "tiering/block_key.h"

#define XXH_STATIC_LINKING_ONLY
#include <gtest/gtest.h>
#include <xxhash.h>

#include <string>
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

// The key is XXH3-128 of the byte layout in docs/block_hash.md; rebuilt here independently, fed to the
// streaming XXH3 API in pieces, and compared with ChainKey (which hashes one contiguous buffer).
TEST(BlockKey, MatchesTheDocumentedByteLayout) {
  auto le = [](std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  for (const std::string& salt : {std::string(), std::string("tenant-a"), std::string(300, 's')}) {
    for (int ntok : {0, 16, 256, 1024}) {  // 1024 tokens takes ChainKey off its inline buffer
      std::vector<int32_t> t(ntok);
      for (int i = 0; i < ntok; ++i) t[i] = (i * 7919) % 128000 - (i % 3 == 0 ? 5 : 0);
      const BlockKey parent{0x1122334455667788ULL, 0x99aabbccddeeff00ULL};
      std::string header = "kvtier.v1";
      le(header, parent.lo, 8);
      le(header, parent.hi, 8);
      le(header, 42, 8);
      le(header, salt.size(), 4);
      std::string token_bytes;
      for (int32_t v : t) le(token_bytes, static_cast<uint32_t>(v), 4);
      XXH3_state_t state;
      XXH3_128bits_reset(&state);
      XXH3_128bits_update(&state, header.data(), header.size());
      XXH3_128bits_update(&state, salt.data(), salt.size());
      XXH3_128bits_update(&state, token_bytes.data(), token_bytes.size());
      const XXH128_hash_t h = XXH3_128bits_digest(&state);
      EXPECT_EQ(ChainKey(parent, 42, salt, t), (BlockKey{h.low64, h.high64})) << salt.size() << " " << ntok;
    }
  }
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
