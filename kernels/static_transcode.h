// Static-scale transcoding: page transcodes where some segments are quantized with externally supplied
// (calibrated) per-channel scales instead of per-block parameters (docs/calibration.md).
//
// A segment whose codec has grouping kStaticChannel (int8, fp8_e4m3 or fp8_e5m2) stores only codes; its
// scale for channel c is scales[segment * head_dim + c], taken from the layout's static scale set (one
// table per layout, indexed in PageGeometry segment order; entries of other segments are ignored). The
// per-element math is FormatTraits' with QParams{s, 1/s, 0}:
//   encode: int8 code = rint(clamp(x * (1/s), -127, 127)); fp8 code = fp8(x * (1/s)) saturating
//   decode: value = decode(code) * s
// so a value within the calibrated range (|x| <= 127 s for int8, <= max_finite s for fp8) has the
// format's usual error bound (int8: |e| <= s/2), and a value beyond it is CLIPPED to the largest code.
// Clipped values are counted: a finite or infinite x with |x * (1/s)| > 127 (int8) or > max_finite (fp8);
// NaN is never counted (it encodes to code 0 as everywhere else).
//
// Every other segment is transcoded exactly as TranscodePageRef does (same bytes). The CPU reference,
// the CPU fast path and the CUDA kernels (kernels/cuda/static_transcode_cuda.h) produce the same bytes
// and the same clip counts.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/page_geometry.h"
#include "kernels/status.h"
#include "kernels/transcode.h"

namespace kvtier {

// True when some segment of `g` uses static scales.
bool HasStaticSegments(const PageGeometry& g);

// Checks a scale table for the geometries: same shape, `scales` holds num_segments * head_dim values, and
// every static segment's scales are finite and > 0.
KernelStatus CheckStaticTranscode(const PageGeometry& src, const PageGeometry& dst, std::span<const float> scales);

// The largest code magnitude of a static-scale format (127 for int8, max_finite for fp8): the clip limit.
float StaticCodeLimit(Format f);

// Scalar reference transcode of one page; adds the values clipped by static scales to *clipped (may be
// null). The definition of correct.
KernelStatus TranscodePageStaticRef(const PageGeometry& src, PageView in, const PageGeometry& dst, MutablePageView out,
                                    std::span<const float> scales, uint64_t* clipped = nullptr);

// Host fast path for a batch of pages (the vectorised code of TranscodePagesCpu plus vectorised static
// segments), `threads` workers; the reference's bytes and clip count.
KernelStatus TranscodePagesStaticCpu(const PageGeometry& src, std::span<const PageView> in, const PageGeometry& dst,
                                     std::span<const MutablePageView> out, std::span<const float> scales,
                                     uint64_t* clipped = nullptr, int threads = 1, CpuPath path = CpuPath::kBest);

}  // namespace kvtier
