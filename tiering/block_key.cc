#include "tiering/block_key.h"

#define XXH_INLINE_ALL  // one-shot XXH3 inlined: a block key is a ~100-byte hash, call overhead matters
#include <xxhash.h>

#include <bit>
#include <cstring>

namespace kvtier {
namespace {

static_assert(std::endian::native == std::endian::little, "keys and hashed token bytes are little-endian");

// One 8-byte store / load each (GCC does not fuse the equivalent byte loops; they were a third of a key).
void PutLe64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, sizeof v); }

uint64_t GetLe64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

constexpr char kDomain[] = "kvtier.v1";

}  // namespace

std::string BlockKey::ToBytes() const {
  std::string s(16, '\0');
  PutLe64(reinterpret_cast<uint8_t*>(s.data()), lo);
  PutLe64(reinterpret_cast<uint8_t*>(s.data()) + 8, hi);
  return s;
}

bool BlockKey::FromBytes(std::string_view bytes, BlockKey* out) {
  if (bytes.size() != 16) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  out->lo = GetLe64(p);
  out->hi = GetLe64(p + 8);
  return true;
}

std::string BlockKey::ToHex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(32);
  for (uint64_t w : {hi, lo})
    for (int i = 15; i >= 0; --i) s.push_back(kDigits[(w >> (4 * i)) & 0xf]);
  return s;
}

namespace {

constexpr size_t kHeader = sizeof(kDomain) - 1 + 16 + 8 + 4;  // domain | parent | layout | salt length
constexpr size_t kParentOffset = sizeof(kDomain) - 1;

// Lays out domain | (parent left for the caller) | layout | salt length | salt; returns the token offset.
size_t PutHeader(uint8_t* buf, uint64_t layout_id, std::string_view tenant_salt) {
  std::memcpy(buf, kDomain, sizeof(kDomain) - 1);
  PutLe64(buf + kParentOffset + 16, layout_id);
  const auto salt_len = static_cast<uint32_t>(tenant_salt.size());
  std::memcpy(buf + kParentOffset + 24, &salt_len, sizeof salt_len);
  if (!tenant_salt.empty()) std::memcpy(buf + kHeader, tenant_salt.data(), tenant_salt.size());
  return kHeader + tenant_salt.size();
}

BlockKey HashWithParent(uint8_t* buf, size_t total, const BlockKey& parent) {
  PutLe64(buf + kParentOffset, parent.lo);
  PutLe64(buf + kParentOffset + 8, parent.hi);
  const XXH128_hash_t h = XXH3_128bits(buf, total);
  return BlockKey{h.low64, h.high64};
}

// The hashed bytes of one block live in one buffer (one-shot XXH3: the streaming API gives the same digest
// for the same bytes, but its state setup costs more than hashing a 16-token block). Small ones stay on
// the stack.
class KeyBuffer {
 public:
  explicit KeyBuffer(size_t total) {
    if (total > sizeof(inline_)) heap_.resize(total);
  }
  uint8_t* data() { return heap_.empty() ? inline_ : reinterpret_cast<uint8_t*>(heap_.data()); }

 private:
  uint8_t inline_[1024];
  std::string heap_;
};

}  // namespace

BlockKey ChainKey(const BlockKey& parent, uint64_t layout_id, std::string_view tenant_salt,
                  std::span<const int32_t> tokens) {
  const size_t total = kHeader + tenant_salt.size() + tokens.size_bytes();
  KeyBuffer buf(total);
  const size_t at = PutHeader(buf.data(), layout_id, tenant_salt);
  if (!tokens.empty()) std::memcpy(buf.data() + at, tokens.data(), tokens.size_bytes());
  return HashWithParent(buf.data(), total, parent);
}

namespace {

// XXH3-128 (seed 0, default secret) of a 97..128-byte key buffer whose parent bytes are passed in
// registers. This is the library's 17-to-128-byte path (xxhash.h, XXH3_len_17to128_128b) unrolled for
// len > 96, bit for bit (tests/tiering/block_key_test.cc compares it with XXH3_128bits): four rounds that
// each multiply two 16-byte chunks with the secret, the front chunks at 48, 32, 16, 0 and the back ones at
// len-64 .. len-16. The parent (bytes 9..24) only enters the front chunks at 16 and 0; every back chunk
// starts at >= len-64 >= 33. The words come from KeyWords and the parent's shifts, so the parent-free work
// of the next block overlaps the chain.
struct Xxh3Words {
  static uint64_t Fold(uint64_t a, uint64_t b) {
    const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
    return static_cast<uint64_t>(p) ^ static_cast<uint64_t>(p >> 64);
  }
  static uint64_t Avalanche(uint64_t h) {
    h ^= h >> 37;
    h *= 0x165667919E3779F9ULL;
    return h ^ (h >> 32);
  }
  static uint64_t Secret(size_t offset) { return GetLe64(XXH3_kSecret + offset); }
  // mix16B: the 16 bytes (lo, hi) against the secret at `offset`.
  static uint64_t Mix16(uint64_t lo, uint64_t hi, size_t offset) {
    return Fold(lo ^ Secret(offset), hi ^ Secret(offset + 8));
  }
};

// The hashed bytes of one block as 64-bit little-endian words, without assembling them in memory: the
// header (domain | parent | layout | salt length | salt, `at` bytes, parent bytes unused) from `header`,
// the block's tokens straight from the caller's array. Assembling a buffer per block and reading words
// that straddle the fresh stores defeats store-to-load forwarding.
class KeyWords {
 public:
  KeyWords(const uint8_t* header, size_t at, const uint8_t* tokens) : header_(header), at_(at), tokens_(tokens) {}
  uint64_t operator()(size_t off) const {
    if (off + 8 <= at_) return GetLe64(header_ + off);
    if (off >= at_) return GetLe64(tokens_ + (off - at_));
    const size_t k = at_ - off;  // 1..7 header bytes, then token bytes
    return (GetLe64(header_ + off) & ((uint64_t{1} << (8 * k)) - 1)) | (GetLe64(tokens_) << (8 * k));
  }

 private:
  const uint8_t* header_;
  size_t at_;
  const uint8_t* tokens_;
};

[[gnu::always_inline]] inline BlockKey HashKey97To128(const KeyWords& r, size_t len, BlockKey parent,
                                                     uint64_t layout_id) {
  using W = Xxh3Words;
  static_assert(kParentOffset == 9, "the word shifts below assume the parent at bytes 9..24");
  const uint64_t w0 = r(0);                                                 // "kvtier.v"
  const uint64_t w8 = static_cast<uint64_t>(kDomain[8]) | (parent.lo << 8);  // '1' | parent.lo[0..6]
  const uint64_t w16 = (parent.lo >> 56) | (parent.hi << 8);                 // parent.lo[7] | parent.hi[0..6]
  const uint64_t w24 = (parent.hi >> 56) | (layout_id << 8);                 // parent.hi[7] | layout[0..6]
  uint64_t lo = len * XXH_PRIME64_1, hi = 0;
  auto round = [&](uint64_t f0, uint64_t f1, size_t back, size_t secret) {  // XXH128_mix32B
    const uint64_t b0 = r(back), b1 = r(back + 8);
    lo += W::Mix16(f0, f1, secret);
    lo ^= b0 + b1;
    hi += W::Mix16(b0, b1, secret + 16);
    hi ^= f0 + f1;
  };
  round(r(48), r(56), len - 64, 96);
  round(r(32), r(40), len - 48, 64);
  round(w16, w24, len - 32, 32);
  round(w0, w8, len - 16, 0);
  const uint64_t h_lo = lo + hi;
  const uint64_t h_hi = lo * XXH_PRIME64_1 + hi * XXH_PRIME64_4 + len * XXH_PRIME64_2;
  return BlockKey{W::Avalanche(h_lo), 0 - W::Avalanche(h_hi)};
}

template <size_t kBlockBytes>
void ChainFixed(BlockKey parent, uint64_t layout_id, uint8_t* buf, size_t at, const int32_t* tokens,
                std::span<BlockKey> out) {
  const size_t len = at + kBlockBytes;
  const auto* token_bytes = reinterpret_cast<const uint8_t*>(tokens);
  if (len > 96 && len <= 128) {  // 16-token blocks with a salt of up to 27 bytes
    for (size_t b = 0; b < out.size(); ++b)
      parent = out[b] = HashKey97To128(KeyWords(buf, at, token_bytes + b * kBlockBytes), len, parent, layout_id);
    return;
  }
  for (size_t b = 0; b < out.size(); ++b) {
    std::memcpy(buf + at, token_bytes + b * kBlockBytes, kBlockBytes);  // a fixed-size copy
    parent = out[b] = HashWithParent(buf, len, parent);
  }
}

}  // namespace

void ChainKeys(const BlockKey& parent, uint64_t layout_id, std::string_view tenant_salt,
               std::span<const int32_t> tokens, int block_size, std::span<BlockKey> out) {
  const size_t block_bytes = static_cast<size_t>(block_size) * sizeof(int32_t);
  const size_t total = kHeader + tenant_salt.size() + block_bytes;
  KeyBuffer buf(total);
  const size_t at = PutHeader(buf.data(), layout_id, tenant_salt);
  switch (block_size) {  // the block sizes layouts use in practice get a constant-size token copy
    case 16: return ChainFixed<16 * sizeof(int32_t)>(parent, layout_id, buf.data(), at, tokens.data(), out);
    case 32: return ChainFixed<32 * sizeof(int32_t)>(parent, layout_id, buf.data(), at, tokens.data(), out);
    case 64: return ChainFixed<64 * sizeof(int32_t)>(parent, layout_id, buf.data(), at, tokens.data(), out);
    default: break;
  }
  BlockKey p = parent;
  for (size_t b = 0; b < out.size(); ++b) {
    std::memcpy(buf.data() + at, tokens.data() + b * block_size, block_bytes);
    p = out[b] = HashWithParent(buf.data(), total, p);
  }
}

std::vector<BlockKey> PrefixKeys(uint64_t layout_id, std::string_view tenant_salt, std::span<const int32_t> tokens,
                                 int block_size) {
  std::vector<BlockKey> keys(block_size > 0 ? tokens.size() / block_size : 0);
  ChainKeys(BlockKey{}, layout_id, tenant_salt, tokens, block_size, keys);
  return keys;
}

}  // namespace kvtier
