// BlockKey: the identity of a full, published block. Keys are chained so that a key names the whole
// prefix up to and including its block:
//   key_i = XXH3-128( "kvtier.v1" | key_{i-1} (16 B, zero for the first block) | layout_id (8 B LE)
//                     | tenant salt (length-prefixed) | tokens of block i (int32 LE) )
// Two sequences share key_i exactly when they share the first i blocks of tokens, the layout and the
// tenant namespace. docs/block_hash.md specifies the byte layout.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/hash/hash.h"

namespace kvtier {

struct BlockKey {
  uint64_t lo = 0;
  uint64_t hi = 0;

  bool IsZero() const { return lo == 0 && hi == 0; }
  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    // Keys are XXH3-128 digests, uniformly distributed already: one 64-bit word through absl's (seeded)
    // mix is enough, and half the work of mixing both (the prefix index is probed once per block).
    return H::combine(std::move(h), k.lo ^ k.hi);
  }

  // 16 bytes, little-endian lo then hi (the wire form).
  std::string ToBytes() const;
  static bool FromBytes(std::string_view bytes, BlockKey* out);
  std::string ToHex() const;
};

BlockKey ChainKey(const BlockKey& parent, uint64_t layout_id, std::string_view tenant_salt,
                  std::span<const int32_t> tokens);

// The keys of out.size() consecutive full blocks of `tokens` (block_size tokens each, tokens.size() >=
// out.size() * block_size), chained from `parent`: out[i] == ChainKey(out[i-1], ...), out[-1] = parent.
// Same digests as ChainKey, at a fraction of the cost per block (the header is laid out once).
void ChainKeys(const BlockKey& parent, uint64_t layout_id, std::string_view tenant_salt,
               std::span<const int32_t> tokens, int block_size, std::span<BlockKey> out);

// The chained keys of every full block of `tokens` (a trailing partial block has none).
std::vector<BlockKey> PrefixKeys(uint64_t layout_id, std::string_view tenant_salt, std::span<const int32_t> tokens,
                                 int block_size);

}  // namespace kvtier
