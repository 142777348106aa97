// The host fast path's per-segment code, written so that the compiler vectorises it: loops over
// contiguous channels with the per-element math inlined from FormatTraits, statistics kept in per-channel
// or per-lane arrays (min/max written as selects), parameters as structure-of-arrays.
//
// NOT a normal header: kernels/cpu/transcode_cpu.cc includes it twice, once inside
// `#pragma GCC target("avx2,fma,f16c")` (namespace avx2, with KVTIER_FAST_F16C set so that fp16
// conversions use the F16C instructions) and once for the baseline ISA (namespace portable). Everything
// here must therefore be defined inside the enclosing namespace the includer opens, and nothing here may
// be `inline` at namespace scope with external linkage (so the two copies never merge).
//
// Result contract: identical bytes to TranscodePageRef. Every value goes through the same FormatTraits
// functions; the only reordering is in min/max reductions, which is exact (MakeParams ignores the sign of
// a zero bound).

// fp16 -> fp32 of n (a multiple of 8) values; exact.
static void HalvesToFloats(const uint16_t* in, float* out, int n) {
#if defined(KVTIER_FAST_F16C)
  for (int i = 0; i < n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#else
  for (int i = 0; i < n; ++i) out[i] = HalfToFloat(in[i]);
#endif
}

// fp32 -> fp16 of n (a multiple of 8) values, round to nearest even, NaN to the canonical 0x7e00 (as
// FloatToHalf does).
static void FloatsToHalves(const float* in, uint16_t* out, int n) {
#if defined(KVTIER_FAST_F16C)
  const __m128i canonical_nan = _mm_set1_epi16(0x7e00);
  for (int i = 0; i < n; i += 8) {
    const __m256 x = _mm256_loadu_ps(in + i);
    const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 nan32 = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(_mm256_castps_si256(nan32)),
                                          _mm256_extracti128_si256(_mm256_castps_si256(nan32), 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_blendv_epi8(h, canonical_nan, nan16));
  }
#else
  for (int i = 0; i < n; ++i) out[i] = FloatToHalf(in[i]);
#endif
}

// Value i of a quantized segment; fp8 codes through a table of the traits' decode (at scale 1).
template <Format F>
static float DecodeOne(const uint8_t* data, int i, const float* lut, float scale, float offset) {
  const uint32_t code = LoadCode<F>(data, i);
  if constexpr (F == Format::kFp8E4m3 || F == Format::kFp8E5m2)
    return lut[code] * scale;
  else
    return FormatTraits<F>::Decode(code, QParams{scale, 0.0f, offset});
}

// Source segment -> fp32 values [tokens * channels].
template <Format F>
static void DecodeSegment(const SegmentCodec& c, SegmentDims d, const uint8_t* data, const uint8_t* params,
                          float* out) {
  using T = FormatTraits<F>;
  const int n = d.tokens * d.channels;
  if constexpr (F == Format::kFp16) {
    HalvesToFloats(reinterpret_cast<const uint16_t*>(data), out, n);
    return;
  } else if constexpr (T::kParamBytes == 0) {
    for (int i = 0; i < n; ++i) out[i] = T::Decode(LoadCode<F>(data, i), QParams{});
    return;
  } else {
    // Parameters as arrays: per (token group, channel) (kPerChannel), per group of one token (kPerToken)
    // or one.
    const int groups = NumGroups(c, d);
    const float seg_scale = LoadSegmentScale<F>(c, d, params);
    float scale[1024], offset[1024];
    for (int g = 0; g < groups; ++g) {
      if constexpr (kTwoLevel<F>) {  // the scale only (LoadParams would also divide for 1/scale)
        scale[g] = E4m3Value(params[g]) * seg_scale;
        offset[g] = 0.0f;
      } else {
        const QParams p = LoadGroupParams<F>(params + g * T::kParamBytes, seg_scale);
        scale[g] = p.scale;
        offset[g] = p.offset;
      }
    }
    float lut[256];  // fp8: decode(code) of every code, from the traits (scale 1)
    if constexpr (F == Format::kFp8E4m3 || F == Format::kFp8E5m2)
      for (int code = 0; code < 256; ++code)
        lut[code] = T::Decode(static_cast<uint32_t>(code), QParams{1.0f, 1.0f, 0.0f});
    const bool per_channel = c.grouping == Grouping::kPerChannel;
    const int width = per_channel                         ? d.channels
                      : c.grouping == Grouping::kPerToken ? ChannelsPerGroup(c, d.channels)
                                                          : n;
    const int tokens_per_group = per_channel ? TokensPerGroup(c, d.tokens) : 1;
    for (int first = 0; first < n; first += width) {
      float* o = out + first;
      // Per channel: group of channel k in this row = base + k; otherwise the row's one group g.
      const int base = per_channel ? (first / d.channels / tokens_per_group) * d.channels : 0;
      const int g = first / width;
      if constexpr (T::kBits == 4) {  // byte by byte: both nibbles of one load
        const uint8_t* bytes = data + first / 2;
        for (int k = 0; k < width / 2; ++k) {
          const int g0 = per_channel ? base + 2 * k : g, g1 = per_channel ? base + 2 * k + 1 : g;
          o[2 * k] = T::Decode(bytes[k] & 0xfu, QParams{scale[g0], 0.0f, offset[g0]});
          o[2 * k + 1] = T::Decode(bytes[k] >> 4, QParams{scale[g1], 0.0f, offset[g1]});
        }
      } else if (per_channel) {
        for (int k = 0; k < width; ++k) o[k] = DecodeOne<F>(data, first + k, lut, scale[base + k], offset[base + k]);
      } else {
        for (int k = 0; k < width; ++k) o[k] = DecodeOne<F>(data, first + k, lut, scale[g], offset[g]);
      }
    }
  }
}

// Column-wise min/max over the finite values of v[rows][cols] into lo[cols], hi[cols] (which the caller
// initialises). Selects with `&`, not `&&`, so that the loop has no control flow and vectorises.
static void MinMaxColumns(const float* v, int rows, int cols, float* lo, float* hi) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const float x = v[r * cols + c];
      const bool finite = fabsf(x) <= 3.402823466e38f;
      lo[c] = (finite & (x < lo[c])) ? x : lo[c];
      hi[c] = (finite & (x > hi[c])) ? x : hi[c];
    }
}

// Min/max over the finite values of v[0..n), n a multiple of 16, as one GroupStats.
static GroupStats StatsOf(const float* v, int n) {
  constexpr int kCols = 16;
  float lo[kCols], hi[kCols];
  for (int c = 0; c < kCols; ++c) lo[c] = __builtin_inff(), hi[c] = -__builtin_inff();
  MinMaxColumns(v, n / kCols, kCols, lo, hi);
  GroupStats s;  // the columns' min/max by selects (libm fminf/fmaxf are calls here)
  for (int c = 0; c < kCols; ++c) {
    s.lo = lo[c] < s.lo ? lo[c] : s.lo;
    s.hi = hi[c] > s.hi ? hi[c] : s.hi;
  }
  return s;
}

// Codes of v[0..n) with per-value parameters (inv[k], offset[k]) into the data area from element `first`.
template <Format F>
static void EncodeRun(const float* v, int n, const float* inv, const float* offset, uint8_t* data, int first) {
  using T = FormatTraits<F>;
  if constexpr (T::kBits == 8) {
    uint8_t* out = data + first;
    for (int k = 0; k < n; ++k) out[k] = static_cast<uint8_t>(T::Encode(v[k], QParams{0.0f, inv[k], offset[k]}));
  } else {  // 4-bit: two codes per byte, low nibble first
    uint8_t* out = data + first / 2;
    for (int k = 0; k < n / 2; ++k) {
      const uint32_t lo = T::Encode(v[2 * k], QParams{0.0f, inv[2 * k], offset[2 * k]});
      const uint32_t hi = T::Encode(v[2 * k + 1], QParams{0.0f, inv[2 * k + 1], offset[2 * k + 1]});
      out[k] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

// Codes of v[0..n) that share one parameter set.
template <Format F>
static void EncodeUniform(const float* v, int n, const QParams p, uint8_t* data, int first) {
  using T = FormatTraits<F>;
  if constexpr (T::kBits == 8) {
    uint8_t* out = data + first;
    for (int k = 0; k < n; ++k) out[k] = static_cast<uint8_t>(T::Encode(v[k], p));
  } else {
    uint8_t* out = data + first / 2;
    for (int k = 0; k < n / 2; ++k)
      out[k] = static_cast<uint8_t>(T::Encode(v[2 * k], p) | (T::Encode(v[2 * k + 1], p) << 4));
  }
}

// fp32 values -> destination segment (codes and parameters).
template <Format F>
static void EncodeSegment(const SegmentCodec& c, SegmentDims d, const float* v, uint8_t* data, uint8_t* params) {
  using T = FormatTraits<F>;
  const int n = d.tokens * d.channels;
  if constexpr (F == Format::kFp16) {
    FloatsToHalves(v, reinterpret_cast<uint16_t*>(data), n);
    return;
  } else if constexpr (T::kParamBytes == 0) {
    uint16_t* out = reinterpret_cast<uint16_t*>(data);
    for (int i = 0; i < n; ++i) out[i] = static_cast<uint16_t>(T::Encode(v[i], QParams{}));
    return;
  } else {
    const int groups = NumGroups(c, d);
    // Statistics of every group first (two-level formats derive the segment scale from all of them).
    GroupStats stats[1024];
    if (c.grouping == Grouping::kPerChannel) {
      const int tg = TokensPerGroup(c, d.tokens);
      float lo[1024], hi[1024];
      for (int g = 0; g < groups; ++g) lo[g] = __builtin_inff(), hi[g] = -__builtin_inff();
      for (int t0 = 0; t0 < d.tokens; t0 += tg)
        MinMaxColumns(v + t0 * d.channels, tg, d.channels, lo + (t0 / tg) * d.channels, hi + (t0 / tg) * d.channels);
      for (int g = 0; g < groups; ++g) stats[g] = GroupStats{lo[g], hi[g]};
    } else if (c.grouping == Grouping::kPerToken) {
      const int width = ChannelsPerGroup(c, d.channels);
      for (int g = 0; g < groups; ++g) stats[g] = StatsOf(v + g * width, width);
    } else {
      stats[0] = StatsOf(v, n);
    }
    float seg_scale = 0.0f;
    if constexpr (kTwoLevel<F>) {
      GroupStats all;
      for (int g = 0; g < groups; ++g) {  // selects, as in StatsOf (libm fminf/fmaxf are calls here)
        all.lo = stats[g].lo < all.lo ? stats[g].lo : all.lo;
        all.hi = stats[g].hi > all.hi ? stats[g].hi : all.hi;
      }
      seg_scale = MakeSegmentScale<F>(all);
      StoreSegmentScale<F>(c, d, params, seg_scale);
    }
    float inv[1024], offset[1024];
    for (int g = 0; g < groups; ++g) {
      const QParams p = MakeGroupParams<F>(stats[g], seg_scale);
      T::StoreParams(params + g * T::kParamBytes, p);
      inv[g] = p.inv_scale;
      offset[g] = p.offset;
    }
    // Codes. Per channel: the parameters vary along the row (and change every token group); otherwise
    // they are constant over `width` consecutive values (a per-token group or the whole segment).
    if (c.grouping == Grouping::kPerChannel) {
      const int tg = TokensPerGroup(c, d.tokens);
      for (int t = 0; t < d.tokens; ++t) {
        const int base = (t / tg) * d.channels;
        EncodeRun<F>(v + t * d.channels, d.channels, inv + base, offset + base, data, t * d.channels);
      }
    } else {
      const int width = c.grouping == Grouping::kPerToken ? ChannelsPerGroup(c, d.channels) : n;
      for (int g = 0; g * width < n; ++g) {
        const QParams p{0.0f, inv[g], offset[g]};
        EncodeUniform<F>(v + g * width, width, p, data, g * width);
      }
    }
  }
}

// One page, segment by segment; `values` holds tokens * channels floats.
static void TranscodePage(const PageGeometry& src, PageView in, const PageGeometry& dst, MutablePageView out,
                          float* values) {
  const SegmentDims dims = src.dims();
  for (int s = 0; s < src.num_segments(); ++s) {
    const SegmentPlacement& a = src.segment(s);
    const SegmentPlacement& b = dst.segment(s);
    const uint8_t* a_params = in.params ? in.params + a.param_offset : nullptr;
    uint8_t* b_params = out.params ? out.params + b.param_offset : nullptr;
    if (a.codec == b.codec) {
      std::memcpy(out.data + b.data_offset, in.data + a.data_offset, a.data_bytes);
      if (a.param_bytes) std::memcpy(b_params, a_params, a.param_bytes);
      continue;
    }
    DispatchFormat(a.codec.format, [&](auto tag) {
      DecodeSegment<decltype(tag)::kFormat>(a.codec, dims, in.data + a.data_offset, a_params, values);
    });
    DispatchFormat(b.codec.format, [&](auto tag) {
      EncodeSegment<decltype(tag)::kFormat>(b.codec, dims, values, out.data + b.data_offset, b_params);
    });
  }
}
