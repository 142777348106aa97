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

// kPerToken: channels per group (group_size, or the whole row when 0).
KVTIER_HD int ChannelsPerGroup(const SegmentCodec& c, int channels) {
  return c.group_size == 0 ? channels : c.group_size;
}

// kPerChannel: tokens per group (group_size, or the whole block when 0; fp4_e2m1 uses 16).
KVTIER_HD int TokensPerGroup(const SegmentCodec& c, int tokens) {
  return c.group_size == 0 ? tokens : c.group_size;
}

KVTIER_HD int NumGroups(const SegmentCodec& c, SegmentDims d) {
  switch (c.grouping) {
    case Grouping::kNone: return 0;
    case Grouping::kPerSegment: return 1;
    case Grouping::kPerChannel: return d.channels * (d.tokens / TokensPerGroup(c, d.tokens));
    case Grouping::kPerToken: return d.tokens * (d.channels / ChannelsPerGroup(c, d.channels));
    case Grouping::kStaticChannel: return 0;  // the scales live in the layout's static scale set
  }
  return 0;
}

// Index of the parameter group that holds value (token, channel). Per channel: token group major, then
// channel (with one token group, the channel); per token: token major, then group within the row.
KVTIER_HD int GroupOf(const SegmentCodec& c, SegmentDims d, int token, int channel) {
  switch (c.grouping) {
    case Grouping::kPerChannel: return (token / TokensPerGroup(c, d.tokens)) * d.channels + channel;
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

// A segment's parameter record: NumGroups records of param_bytes, then (two-level formats) the segment's
// own parameters at SegmentScaleOffset.
inline uint32_t SegmentParamBytes(const SegmentCodec& c, SegmentDims d) {
  const FormatInfo fi = GetFormatInfo(c.format);
  return static_cast<uint32_t>(NumGroups(c, d)) * fi.param_bytes + (NumGroups(c, d) ? fi.segment_param_bytes : 0);
}

// Two-level formats (fp4_e2m1): group parameters derive from a per-segment scale, stored after the
// groups. These wrappers give one interface for both kinds; for one-level formats the segment scale is 0
// and ignored.
template <Format F>
inline constexpr bool kTwoLevel = FormatTraits<F>::kSegmentParamBytes > 0;

// Byte offset of the segment scale inside the segment's parameter record (= groups * kParamBytes; for
// fp4_e2m1 always tokens * channels / 16, a multiple of 4).
template <Format F>
KVTIER_HD int SegmentScaleOffset(const SegmentCodec& c, SegmentDims d) {
  return NumGroups(c, d) * FormatTraits<F>::kParamBytes;
}

template <Format F>
KVTIER_HD float MakeSegmentScale(const GroupStats& segment) {
  if constexpr (kTwoLevel<F>) return FormatTraits<F>::MakeSegmentScale(segment);
  else return 0.0f;
}

template <Format F>
KVTIER_HD float LoadSegmentScale(const SegmentCodec& c, SegmentDims d, const uint8_t* params) {
  if constexpr (kTwoLevel<F>) return FormatTraits<F>::LoadSegmentScale(params + SegmentScaleOffset<F>(c, d));
  else return 0.0f;
}

template <Format F>
KVTIER_HD void StoreSegmentScale(const SegmentCodec& c, SegmentDims d, uint8_t* params, float seg_scale) {
  if constexpr (kTwoLevel<F>) FormatTraits<F>::StoreSegmentScale(params + SegmentScaleOffset<F>(c, d), seg_scale);
}

template <Format F>
KVTIER_HD QParams MakeGroupParams(const GroupStats& s, float seg_scale) {
  if constexpr (kTwoLevel<F>) return FormatTraits<F>::MakeParams(s, seg_scale);
  else return FormatTraits<F>::MakeParams(s);
}

// Parameters of the group whose record starts at `record`.
template <Format F>
KVTIER_HD QParams LoadGroupParams(const uint8_t* record, float seg_scale) {
  if constexpr (kTwoLevel<F>) return FormatTraits<F>::LoadParams(record, seg_scale);
  else return FormatTraits<F>::LoadParams(record);
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
  GroupStats all;
  for (int g = 0; g < groups; ++g) all.Merge(stats[g]);
  const float seg_scale = MakeSegmentScale<F>(all);
  StoreSegmentScale<F>(c, d, params, seg_scale);
  QParams qp[1024];
  for (int g = 0; g < groups; ++g) {
    qp[g] = MakeGroupParams<F>(stats[g], seg_scale);
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
  const float seg_scale = NumGroups(c, d) == 0 ? 0.0f : LoadSegmentScale<F>(c, d, params);
  for (int t = 0; t < d.tokens; ++t)
    for (int ch = 0; ch < d.channels; ++ch) {
      const int i = t * d.channels + ch;
      const QParams p = NumGroups(c, d) == 0
                            ? QParams{}
                            : LoadGroupParams<F>(params + GroupOf(c, d, t, ch) * T::kParamBytes, seg_scale);
      values[i] = T::Decode(LoadCode<F>(data, i), p);
    }
}

}  // namespace kvtier
