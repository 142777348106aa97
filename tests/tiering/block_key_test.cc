#include "tiering/block_key.h"

#define XXH_STATIC_LINKING_ONLY
#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
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

// docs/block_hash.md's test vectors (tests/tiering/block_key_vectors.txt), also checked by the Python
// implementation (client/python/kvtier/block_hash.py, tests/client/block_hash_test.py). One vector a line:
//   layout_id salt_hex parent_hex tokens_csv key_hex
// ("-" for an empty salt; parent_hex of 32 zeros for the first block; key_hex in the 16-byte wire form).
// KVTIER_WRITE_VECTORS=FILE rewrites the keys of the file's inputs with this implementation.
std::string HexBytes(const std::string& b) {
  std::string out;
  char buf[3];
  for (unsigned char c : b) {
    std::snprintf(buf, sizeof buf, "%02x", c);
    out += buf;
  }
  return out;
}
std::string UnHex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

TEST(BlockKey, MatchesThePublishedTestVectors) {
  std::ifstream in(KVTIER_SOURCE_DIR "/tests/tiering/block_key_vectors.txt");
  ASSERT_TRUE(in) << "block_key_vectors.txt";
  std::string line, rewritten;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') {
      rewritten += line + "\n";
      continue;
    }
    std::istringstream ls(line);
    uint64_t layout = 0;
    std::string salt_hex, parent_hex, tokens_csv, key_hex;
    ls >> layout >> salt_hex >> parent_hex >> tokens_csv >> key_hex;
    const std::string salt = salt_hex == "-" ? "" : UnHex(salt_hex);
    BlockKey parent;
    ASSERT_TRUE(BlockKey::FromBytes(UnHex(parent_hex), &parent)) << line;
    std::vector<int32_t> tokens;
    std::stringstream ts(tokens_csv);
    for (std::string t; std::getline(ts, t, ',');) tokens.push_back(static_cast<int32_t>(std::stol(t)));
    const std::string got = HexBytes(ChainKey(parent, layout, salt, tokens).ToBytes());
    EXPECT_EQ(got, key_hex) << line;
    rewritten += std::to_string(layout) + " " + salt_hex + " " + parent_hex + " " + tokens_csv + " " + got + "\n";
    ++checked;
  }
  EXPECT_GE(checked, 8);
  if (const char* out = std::getenv("KVTIER_WRITE_VECTORS")) std::ofstream(out) << rewritten;
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

TEST(BlockKey, BatchedChainEqualsOneKeyAtATime) {
  // ChainKeys/PrefixKeys lay the header out once and copy fixed-size token blocks; they must give exactly
  // ChainKey's digests, for the block sizes with a fixed-size path (16/32/64), others, and salts that push
  // a block past the inline buffer.
  // 16-token blocks hash 101 + salt bytes: salts of 0..27 bytes take the unrolled 97..128-byte path,
  // 28 and more the library's.
  std::vector<std::string> salts = {std::string(1000, 's')};
  for (int n = 0; n <= 40; ++n) salts.push_back(std::string(n, static_cast<char>('a' + n % 26)));
  for (const std::string& salt : salts) {
    for (int bs : {1, 7, 16, 32, 64, 300}) {
      std::vector<int32_t> t(bs * 9 + bs / 2);  // nine full blocks and a partial one (no key)
      for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>((i * 104729) % 151000) - 70000;
      std::vector<BlockKey> expect;
      BlockKey parent;
      for (size_t b = 0; b < t.size() / bs; ++b)
        expect.push_back(parent = ChainKey(parent, 42, salt, std::span<const int32_t>(t).subspan(b * bs, bs)));
      EXPECT_EQ(PrefixKeys(42, salt, t, bs), expect) << salt.size() << " " << bs;
      // Layout ids with all 8 bytes set (the unrolled path shifts the layout id into a straddling word).
      const uint64_t wide = 0xf1e2d3c4b5a69788ULL;
      BlockKey p2;
      std::vector<BlockKey> expect_wide;
      for (size_t b = 0; b < t.size() / bs; ++b)
        expect_wide.push_back(p2 = ChainKey(p2, wide, salt, std::span<const int32_t>(t).subspan(b * bs, bs)));
      EXPECT_EQ(PrefixKeys(wide, salt, t, bs), expect_wide) << salt.size() << " " << bs;
      // From a non-zero parent, on a sub-span.
      std::vector<BlockKey> tail(8);
      ChainKeys(expect[0], 42, salt, std::span<const int32_t>(t).subspan(bs), bs, tail);
      EXPECT_EQ(tail, std::vector<BlockKey>(expect.begin() + 1, expect.end())) << salt.size() << " " << bs;
    }
  }
  EXPECT_TRUE(PrefixKeys(42, "", std::vector<int32_t>(15), 16).empty());
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
