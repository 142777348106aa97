// Segment geometry (how many parameter groups a segment has, where each value and group lives) and the
// scalar reference codec built on FormatTraits. The reference is the definition of correct: the fast
// CPU path and the CUDA kernels must produce the same codes (bit-exact) and parameters.
#pragma once

#include <cstdint>

#include "kernels/format.h"

namespace kvtier {

struct SegmentDims {
  int tokens;    // block_size
  int channels;  // head_dim
};

KVTIER_HD int ChannelsPerGroup(const SegmentCodec& c, int channels) {
  return c.group_size == 0 ? channels : c.group_size;
}

KVTIER_HD int NumGroups(const SegmentCodec& c, SegmentDims d) {
  switch (c.grouping) {
    case Grouping::kNone: return 0;
    case Grouping::kPerSegment: return 1;
    case Grouping::kPerChannel: return d.channels;
    case Grouping::kPerToken: return d.tokens * (d.channels / ChannelsPerGroup(c, d.channels));
    case Grouping::kStaticChannel: return 0;  // the scales live in the layout's static scale set
  }
  return 0;
}

// Index of the parameter group that holds value (token, channel).
KVTIER_HD int GroupOf(const SegmentCodec& c, SegmentDims d, int token, int channel) {
  switch (c.grouping) {
    case Grouping::kPerChannel: return channel;
    case Grouping::kPerToken: {
      const int g = ChannelsPerGroup(c, d.channels);
      return token * (d.channels / g) + channel / g;
    }
    default: return 0;
  }
}

inline uint32_t SegmentDataBytes(Format f, SegmentDims d) {
  return static_cast<uint32_t>(d.tokens) * d.channels * GetFormatInfo(f).bits / 8;
}

inline uint32_t SegmentParamBytes(const SegmentCodec& c, SegmentDims d) {
  return static_cast<uint32_t>(NumGroups(c, d)) * GetFormatInfo(c.format).param_bytes;
}

// Code of element i (= token * channels + channel) in a segment's data area.
template <Format F>
KVTIER_HD uint32_t LoadCode(const uint8_t* data, int i) {
  constexpr int kBits = FormatTraits<F>::kBits;
  if constexpr (kBits == 16) {
    uint16_t v;
    memcpy(&v, data + 2 * i, 2);
    return v;
  } else if constexpr (kBits == 8) {
    return data[i];
  } else {
    return (data[i >> 1] >> ((i & 1) * 4)) & 0xfu;
  }
}

template <Format F>
KVTIER_HD void StoreCode(uint8_t* data, int i, uint32_t code) {
  constexpr int kBits = FormatTraits<F>::kBits;
  if constexpr (kBits == 16) {
    const uint16_t v = static_cast<uint16_t>(code);
    memcpy(data + 2 * i, &v, 2);
  } else if constexpr (kBits == 8) {
    data[i] = static_cast<uint8_t>(code);
  } else {
    uint8_t& b = data[i >> 1];
    b = (i & 1) ? static_cast<uint8_t>((b & 0x0fu) | (code << 4)) : static_cast<uint8_t>((b & 0xf0u) | code);
  }
}

// Reference: quantizes values[tokens * channels] (token-major) into data/params.
template <Format F>
void QuantizeSegmentRef(const SegmentCodec& c, SegmentDims d, const float* values, uint8_t* data,
                        uint8_t* params) {
  using T = FormatTraits<F>;
  const int n = d.tokens * d.channels;
  const int groups = NumGroups(c, d);
  if (groups == 0) {
    for (int i = 0; i < n; ++i) StoreCode<F>(data, i, T::Encode(values[i], QParams{}));
    return;
  }
  GroupStats stats[1024];  // groups <= max(head_dim, block_size * head_dim / group) <= 1024 by validation
  for (int g = 0; g < groups; ++g) stats[g] = GroupStats{};
  for (int t = 0; t < d.tokens; ++t)
    for (int ch = 0; ch < d.channels; ++ch) stats[GroupOf(c, d, t, ch)].Add(values[t * d.channels + ch]);
  QParams qp[1024];
  for (int g = 0; g < groups; ++g) {
    qp[g] = T::MakeParams(stats[g]);
    T::StoreParams(params + g * T::kParamBytes, qp[g]);
  }
  for (int t = 0; t < d.tokens; ++t)
    for (int ch = 0; ch < d.channels; ++ch) {
      const int i = t * d.channels + ch;
      StoreCode<F>(data, i, T::Encode(values[i], qp[GroupOf(c, d, t, ch)]));
    }
}

// Reference: decodes a segment into values[tokens * channels].
template <Format F>
void DequantizeSegmentRef(const SegmentCodec& c, SegmentDims d, const uint8_t* data, const uint8_t* params,
                          float* values) {
  using T = FormatTraits<F>;
  for (int t = 0; t < d.tokens; ++t)
    for (int ch = 0; ch < d.channels; ++ch) {
      const int i = t * d.channels + ch;
      const QParams p = NumGroups(c, d) == 0 ? QParams{}
                                             : T::LoadParams(params + GroupOf(c, d, t, ch) * T::kParamBytes);
      values[i] = T::Decode(LoadCode<F>(data, i), p);
    }
}

}  // namespace kvtier
