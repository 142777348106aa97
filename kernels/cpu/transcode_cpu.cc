// Host batch transcode: the vectorised per-segment code of transcode_fast_impl.h, compiled twice (AVX2 +
// FMA + F16C, chosen at run time when the CPU has them, and the baseline ISA), with pages split across
// worker threads. Produces exactly TranscodePageRef's bytes (tests/kernels/transcode_test.cc).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "kernels/cpu/avx2_target.h"
#include "kernels/format.h"
#include "kernels/segment.h"
#include "kernels/transcode.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KVTIER_HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

namespace kvtier {
namespace portable {
#include "kernels/cpu/transcode_fast_impl.h"
}  // namespace portable

#if defined(KVTIER_HAVE_AVX2_PATH)
KVTIER_AVX2_BEGIN
#define KVTIER_FAST_F16C 1
namespace avx2 {
#include "kernels/cpu/transcode_fast_impl.h"
}  // namespace avx2
#undef KVTIER_FAST_F16C
KVTIER_AVX2_END
#endif

namespace {

using PageFn = void (*)(const PageGeometry&, PageView, const PageGeometry&, MutablePageView, float*);

PageFn SelectPath(CpuPath path) {
#if defined(KVTIER_HAVE_AVX2_PATH)
  static const bool has_avx2 = CpuHasAvx2FmaF16c();
  if (path == CpuPath::kBest && has_avx2) return avx2::TranscodePage;
#else
  (void)path;
#endif
  return portable::TranscodePage;
}

}  // namespace

const char* CpuPathName(CpuPath path) {
  return SelectPath(path) == portable::TranscodePage ? "portable" : "avx2+fma+f16c";
}

KernelStatus TranscodePagesCpu(const PageGeometry& src, std::span<const PageView> in, const PageGeometry& dst,
                               std::span<const MutablePageView> out, int threads, CpuPath path) {
  if (in.size() != out.size()) return InvalidArgument("transcode batch: input and output counts differ");
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckTranscodable(src, dst));
  for (size_t i = 0; i < in.size(); ++i)
    if ((src.param_bytes() && !in[i].params) || (dst.param_bytes() && !out[i].params) || !in[i].data || !out[i].data)
      return InvalidArgument("transcode batch: page " + std::to_string(i) + " lacks its data or parameter record");
  const PageFn fn = SelectPath(path);
  const int n = static_cast<int>(in.size());
  const int workers = std::max(1, std::min(threads, n));
  const size_t values = static_cast<size_t>(src.dims().tokens) * src.dims().channels;
  std::atomic<int> next{0};
  auto work = [&] {
    std::unique_ptr<float[]> buf(new float[values]);
    for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(src, in[i], dst, out[i], buf.get());
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return KernelStatus::Ok();
}

}  // namespace kvtier
