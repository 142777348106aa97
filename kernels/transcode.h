// Page transcoding: converting whole pages between two geometries of the same shape (for example the
// fp16 GPU-resident format and the int8 offload format). Page-out is a transcode from the resident
// geometry to the offload geometry, page-in the reverse; writing a block from an engine's activations
// is a transcode from the activation geometry (fp16/bf16 everywhere).
//
// Each segment is decoded with its source codec into fp32 and encoded with its destination codec;
// segments whose codecs are equal are copied byte for byte (so pass-through is exact).
#pragma once

#include <cstdint>
#include <span>

#include "kernels/page_geometry.h"
#include "kernels/status.h"

namespace kvtier {

// One page in memory: its data area and its parameter record (may be null when the geometry has none).
struct PageView {
  const uint8_t* data = nullptr;
  const uint8_t* params = nullptr;
};
struct MutablePageView {
  uint8_t* data = nullptr;
  uint8_t* params = nullptr;
};

// Checks that two geometries can be transcoded into each other (same shape).
KernelStatus CheckTranscodable(const PageGeometry& src, const PageGeometry& dst);

// Scalar reference transcode of one page. The definition of correct.
KernelStatus TranscodePageRef(const PageGeometry& src, PageView in, const PageGeometry& dst, MutablePageView out);

// Which compiled variant of the host fast path to use: the best the CPU supports (AVX2 + FMA + F16C on
// x86-64, chosen at run time) or the baseline-ISA build of the same code (tests compare the two).
enum class CpuPath : uint8_t { kBest = 0, kPortable = 1 };

// Host fast path: transcodes a batch of pages (out[i] from in[i]) using up to `threads` worker threads
// (the calling thread is one of them). Produces exactly the reference's bytes. Input and output pages
// must not overlap. Fails, changing nothing, when a page lacks its data or a needed parameter record.
KernelStatus TranscodePagesCpu(const PageGeometry& src, std::span<const PageView> in, const PageGeometry& dst,
                               std::span<const MutablePageView> out, int threads = 1, CpuPath path = CpuPath::kBest);

// "avx2+fma+f16c" or "portable": what TranscodePagesCpu runs for `path` on this CPU.
const char* CpuPathName(CpuPath path);

}  // namespace kvtier
