// KvOracle: self-verifying KV content. Every value of a block is a pure function of (block seed, layer,
// K|V, head, token, channel), where the block seed is derived from the tokens of the whole prefix up to
// and including the block. Whoever holds the prompt can regenerate what any block must contain, so a
// misrouted (another prompt's), stale or torn block is detected wherever it surfaces: in tests, the demo
// workers and the stress driver.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>

#include "kernels/format.h"
#include "kernels/page_geometry.h"

namespace kvtier::testing {

inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Seed of block `block_index` of a prompt: folds every token of blocks 0..block_index.
inline uint64_t BlockSeed(std::span<const int32_t> prompt, int block_size, int block_index) {
  uint64_t h = 0x6b76746965720001ULL;  // "kvtier" + version
  const size_t end = static_cast<size_t>(block_index + 1) * block_size;
  for (size_t i = 0; i < end && i < prompt.size(); ++i) h = SplitMix64(h ^ static_cast<uint32_t>(prompt[i]));
  return h;
}

// The value at one position: roughly N(0, 1) with a few large-magnitude K channels (like real K).
inline float OracleValue(uint64_t seed, int layer, Operand op, int head, int token, int channel) {
  const uint64_t pos = (static_cast<uint64_t>(layer) << 40) ^ (static_cast<uint64_t>(op) << 39) ^
                       (static_cast<uint64_t>(head) << 30) ^ (static_cast<uint64_t>(token) << 16) ^
                       static_cast<uint64_t>(channel);
  const uint64_t r = SplitMix64(seed ^ SplitMix64(pos));
  // Sum of 4 uniforms in [-1, 1), rescaled: close to a unit normal, bounded by +-3.5.
  float v = 0;
  for (int i = 0; i < 4; ++i) v += static_cast<float>((r >> (16 * i)) & 0xffff) / 32768.0f - 1.0f;
  v *= 0.866f;
  if (op == Operand::kKey && channel % 37 == 5) v *= 8.0f;  // outlier channels
  return v;
}

// Fills one activation page (fp16 or bf16, page order of `g`, which must have no parameters).
inline void FillActivationPage(const PageGeometry& g, Format dtype, uint64_t seed, uint8_t* out) {
  const LayoutShape& s = g.shape();
  for (int layer = 0; layer < s.num_layers; ++layer)
    for (Operand op : {Operand::kKey, Operand::kValue})
      for (int head = 0; head < s.num_kv_heads; ++head) {
        uint8_t* seg = out + g.segment(layer, op, head).data_offset;
        for (int t = 0; t < s.block_size; ++t)
          for (int c = 0; c < s.head_dim; ++c) {
            const float v = OracleValue(seed, layer, op, head, t, c);
            const uint16_t bits = dtype == Format::kBf16 ? FloatToBf16(v) : FloatToHalf(v);
            std::memcpy(seg + 2 * (t * s.head_dim + c), &bits, 2);
          }
      }
}

struct OracleCheck {
  float max_abs_error = 0;   // over all values
  float max_rel_error = 0;   // |err| / (segment absmax), over all segments
  int64_t bad_values = 0;    // values beyond `tolerance` x segment absmax
};

// Compares an activation page against the oracle. tolerance is relative to each segment's absmax
// (e.g. 1/127 for an int8 round trip; 1e-3 for fp16).
inline OracleCheck CheckActivationPage(const PageGeometry& g, Format dtype, uint64_t seed, const uint8_t* page,
                                       float tolerance) {
  OracleCheck r;
  const LayoutShape& s = g.shape();
  for (int layer = 0; layer < s.num_layers; ++layer)
    for (Operand op : {Operand::kKey, Operand::kValue})
      for (int head = 0; head < s.num_kv_heads; ++head) {
        const uint8_t* seg = page + g.segment(layer, op, head).data_offset;
        float absmax = 0;
        for (int t = 0; t < s.block_size; ++t)
          for (int c = 0; c < s.head_dim; ++c)
            absmax = std::fmax(absmax, std::fabs(OracleValue(seed, layer, op, head, t, c)));
        for (int t = 0; t < s.block_size; ++t)
          for (int c = 0; c < s.head_dim; ++c) {
            uint16_t bits;
            std::memcpy(&bits, seg + 2 * (t * s.head_dim + c), 2);
            const float got = dtype == Format::kBf16 ? Bf16ToFloat(bits) : HalfToFloat(bits);
            const float err = std::fabs(got - OracleValue(seed, layer, op, head, t, c));
            if (!(err <= r.max_abs_error)) r.max_abs_error = std::isnan(err) ? INFINITY : err;
            const float rel = absmax > 0 ? err / absmax : err;
            if (!(rel <= r.max_rel_error)) r.max_rel_error = std::isnan(rel) ? INFINITY : rel;
            if (!(rel <= tolerance)) ++r.bad_values;
          }
      }
  return r;
}

// Keyed block seed for the stress tools: the prefix seed mixed with a key (e.g. the layout's tag), so
// that the same tokens under two layouts (or two tenants) give different content and a block served
// across them is caught.
inline uint64_t KeyedBlockSeed(std::span<const int32_t> prompt, int block_size, int block_index, uint64_t key) {
  return SplitMix64(BlockSeed(prompt, block_size, block_index) ^ SplitMix64(key ^ 0x7374726573730001ULL));
}

// Per-segment verdict on one activation page: a block whose every (layer, K|V, head) segment is off is
// some other block (misrouted or stale); one with only some segments off is torn (partly overwritten,
// partly copied).
struct SegmentCheck {
  int segments = 0;
  int bad_segments = 0;
  float max_rel_error = 0;
  bool ok() const { return bad_segments == 0; }
  bool wrong() const { return segments > 0 && bad_segments == segments; }
  bool torn() const { return bad_segments > 0 && bad_segments < segments; }
};

inline SegmentCheck CheckActivationPageSegments(const PageGeometry& g, Format dtype, uint64_t seed,
                                                const uint8_t* page, float tolerance) {
  SegmentCheck r;
  const LayoutShape& s = g.shape();
  for (int layer = 0; layer < s.num_layers; ++layer)
    for (Operand op : {Operand::kKey, Operand::kValue})
      for (int head = 0; head < s.num_kv_heads; ++head) {
        const uint8_t* seg = page + g.segment(layer, op, head).data_offset;
        float absmax = 0;
        for (int t = 0; t < s.block_size; ++t)
          for (int c = 0; c < s.head_dim; ++c)
            absmax = std::fmax(absmax, std::fabs(OracleValue(seed, layer, op, head, t, c)));
        bool bad = false;
        for (int t = 0; t < s.block_size && !bad; ++t)
          for (int c = 0; c < s.head_dim; ++c) {
            uint16_t bits;
            std::memcpy(&bits, seg + 2 * (t * s.head_dim + c), 2);
            const float got = dtype == Format::kBf16 ? Bf16ToFloat(bits) : HalfToFloat(bits);
            const float err = std::fabs(got - OracleValue(seed, layer, op, head, t, c));
            const float rel = absmax > 0 ? err / absmax : err;
            if (!(rel <= r.max_rel_error)) r.max_rel_error = std::isnan(rel) ? INFINITY : rel;
            if (!(rel <= tolerance)) {
              bad = true;
              break;
            }
          }
        ++r.segments;
        r.bad_segments += bad;
      }
  return r;
}

}  // namespace kvtier::testing
