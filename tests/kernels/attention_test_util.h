// Test fixtures for paged attention: a host page pool filled with random quantized blocks, shuffled
// block tables, random queries, and error measures. Shared by the CPU and CUDA attention tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/attention/attention.h"
#include "kernels/half.h"
#include "kernels/page_geometry.h"
#include "kernels/segment.h"

namespace kvtier::testing {

// A host pool of `num_slots` pages whose every segment holds random values (normal, with a per-channel
// spread so that per-channel K scales matter) quantized by the reference codec.
struct HostPool {
  std::vector<uint8_t> data, params;
  int64_t num_slots = 0;
  PagedKvPool view() const { return {data.data(), params.empty() ? nullptr : params.data(), num_slots}; }
};

inline HostPool MakeRandomPool(const PageGeometry& g, int64_t num_slots, uint32_t seed) {
  HostPool p;
  p.num_slots = num_slots;
  p.data.assign(num_slots * g.page_bytes(), 0);
  p.params.assign(num_slots * g.param_bytes(), 0);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const SegmentDims d = g.dims();
  std::vector<float> vals(static_cast<size_t>(d.tokens) * d.channels);
  std::vector<float> channel_spread(d.channels);
  for (auto& s : channel_spread) s = 0.25f + 2.0f * std::abs(n(rng));
  for (int64_t s = 0; s < num_slots; ++s)
    for (int i = 0; i < g.num_segments(); ++i) {
      const SegmentPlacement& sp = g.segment(i);
      for (int t = 0; t < d.tokens; ++t)
        for (int c = 0; c < d.channels; ++c) vals[t * d.channels + c] = n(rng) * channel_spread[c] + 0.1f;
      uint8_t* data = p.data.data() + s * g.page_bytes() + sp.data_offset;
      uint8_t* prm = p.params.data() + s * g.param_bytes() + sp.param_offset;
      DispatchFormat(sp.codec.format, [&](auto tag) {
        QuantizeSegmentRef<decltype(tag)::kFormat>(sp.codec, d, vals.data(), data, prm);
      });
    }
  return p;
}

// Sequences with the given lengths, each block on a distinct random slot (shuffled like a real pool).
struct Batch {
  std::vector<int32_t> lens, table;
  int32_t stride = 0;
  PagedKvBatch view() const { return {static_cast<int32_t>(lens.size()), lens.data(), table.data(), stride}; }
};

inline int64_t SlotsNeeded(const std::vector<int32_t>& lens, int block_size) {
  int64_t n = 0;
  for (int32_t l : lens) n += (l + block_size - 1) / block_size;
  return n;
}

inline Batch MakeBatch(const std::vector<int32_t>& lens, int block_size, int64_t num_slots, uint32_t seed) {
  Batch b;
  b.lens = lens;
  int32_t max_blocks = 1;
  for (int32_t l : lens) max_blocks = std::max(max_blocks, (l + block_size - 1) / block_size);
  b.stride = max_blocks + 1;  // one spare column: rows are padded like an engine's table
  std::vector<int32_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), std::mt19937(seed));
  b.table.assign(lens.size() * b.stride, -1);
  size_t next = 0;
  for (size_t i = 0; i < lens.size(); ++i)
    for (int k = 0; k < (lens[i] + block_size - 1) / block_size; ++k) b.table[i * b.stride + k] = slots[next++];
  return b;
}

// Random activations stored as `dtype` (fp16 / bf16 / fp32 raw bytes).
inline std::vector<uint8_t> RandomActs(int64_t count, ActDtype dtype, uint32_t seed) {
  std::vector<uint8_t> out(count * ActDtypeBytes(dtype));
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (int64_t i = 0; i < count; ++i) {
    const float v = n(rng);
    if (dtype == ActDtype::kFp32) {
      std::memcpy(&out[4 * i], &v, 4);
    } else {
      const uint16_t h = dtype == ActDtype::kFp16 ? FloatToHalf(v) : FloatToBf16(v);
      std::memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

inline std::vector<float> ActsToFloat(const std::vector<uint8_t>& raw, ActDtype dtype) {
  const int64_t n = static_cast<int64_t>(raw.size()) / ActDtypeBytes(dtype);
  std::vector<float> out(n);
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == ActDtype::kFp32) {
      std::memcpy(&out[i], &raw[4 * i], 4);
    } else {
      uint16_t h;
      std::memcpy(&h, &raw[2 * i], 2);
      out[i] = dtype == ActDtype::kFp16 ? HalfToFloat(h) : Bf16ToFloat(h);
    }
  }
  return out;
}

// ||a - b|| / ||b||; NaN anywhere gives +inf (never passes a tolerance).
inline double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline PageGeometry UniformGeometry(LayoutShape shape, Format k, Format v) {
  auto g = PageGeometry::Uniform(shape, DefaultCodec(k, Operand::kKey), DefaultCodec(v, Operand::kValue));
  return std::move(g).value();
}

}  // namespace kvtier::testing
