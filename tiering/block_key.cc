#include "tiering/block_key.h"

#define XXH_INLINE_ALL  // one-shot XXH3 inlined: a block key is a ~100-byte hash, call overhead matters
#include <xxhash.h>

#include <bit>
#include <cstring>

namespace kvtier {
namespace {

void PutLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t GetLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
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

BlockKey ChainKey(const BlockKey& parent, uint64_t layout_id, std::string_view tenant_salt,
                  std::span<const int32_t> tokens) {
  // Hashed bytes: domain | parent | layout | salt length | salt | tokens. They are laid out in one
  // buffer and hashed with one-shot XXH3 (the streaming API gives the same digest for the same bytes,
  // but its state setup costs more than hashing a 16-token block).
  static_assert(std::endian::native == std::endian::little, "token bytes are hashed as little-endian");
  constexpr size_t kHeader = sizeof(kDomain) - 1 + 16 + 8 + 4;
  constexpr size_t kInline = 1024;
  const size_t total = kHeader + tenant_salt.size() + tokens.size_bytes();
  uint8_t inline_buf[kInline];
  std::string heap;
  uint8_t* buf = inline_buf;
  if (total > kInline) {
    heap.resize(total);
    buf = reinterpret_cast<uint8_t*>(heap.data());
  }
  uint8_t* p = buf;
  std::memcpy(p, kDomain, sizeof(kDomain) - 1);
  p += sizeof(kDomain) - 1;
  PutLe64(p, parent.lo);
  PutLe64(p + 8, parent.hi);
  PutLe64(p + 16, layout_id);
  const auto salt_len = static_cast<uint32_t>(tenant_salt.size());
  for (int i = 0; i < 4; ++i) p[24 + i] = static_cast<uint8_t>(salt_len >> (8 * i));
  p += 28;
  if (!tenant_salt.empty()) std::memcpy(p, tenant_salt.data(), tenant_salt.size());
  p += tenant_salt.size();
  if (!tokens.empty()) std::memcpy(p, tokens.data(), tokens.size_bytes());
  const XXH128_hash_t h = XXH3_128bits(buf, total);
  return BlockKey{h.low64, h.high64};
}

}  // namespace kvtier
