// Internal to the attention back ends: decode and extend reduced to one job description (decode is
// extend with one query row per sequence), plus host helpers for activations and segment decoding.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/attention/attention.h"
#include "kernels/half.h"
#include "kernels/segment.h"

namespace kvtier {

struct AttentionJob {
  const PageGeometry* geometry;
  PagedKvPool pool;
  PagedKvBatch batch;
  const int32_t* q_indptr;  // null: decode (row i is sequence i's single query)
  int32_t layer;
  int32_t num_q_heads;
  int32_t head_dim;
  ActDtype dtype;
  const void* q;
  void* out;
  float sm_scale;  // effective (never 0)

  int32_t QBegin(int seq) const { return q_indptr ? q_indptr[seq] : seq; }
  int32_t QCount(int seq) const { return q_indptr ? q_indptr[seq + 1] - q_indptr[seq] : 1; }
};

AttentionJob JobOf(const DecodeParams& p);
AttentionJob JobOf(const ExtendParams& p);
KernelStatus ValidateJob(const AttentionJob& j);

inline float LoadAct(const void* base, ActDtype d, int64_t i) {
  switch (d) {
    case ActDtype::kFp16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const uint8_t*>(base) + 2 * i, 2);
      return HalfToFloat(h);
    }
    case ActDtype::kBf16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const uint8_t*>(base) + 2 * i, 2);
      return Bf16ToFloat(h);
    }
    case ActDtype::kFp32:
      break;
  }
  float f;
  std::memcpy(&f, static_cast<const uint8_t*>(base) + 4 * i, 4);
  return f;
}

inline void StoreAct(void* base, ActDtype d, int64_t i, float v) {
  uint8_t* p = static_cast<uint8_t*>(base);
  if (d == ActDtype::kFp32) {
    std::memcpy(p + 4 * i, &v, 4);
    return;
  }
  const uint16_t h = d == ActDtype::kFp16 ? FloatToHalf(v) : FloatToBf16(v);
  std::memcpy(p + 2 * i, &h, 2);
}

// Decodes one segment (block_size x head_dim) into values via the reference codec.
inline void DecodeSegment(const SegmentCodec& c, SegmentDims d, const uint8_t* data, const uint8_t* params,
                          float* values) {
  DispatchFormat(c.format, [&](auto tag) { DequantizeSegmentRef<decltype(tag)::kFormat>(c, d, data, params, values); });
}

}  // namespace kvtier
