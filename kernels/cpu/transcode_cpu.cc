// Host batch transcode: pages are independent, so the batch is split across worker threads.
#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "kernels/transcode.h"

namespace kvtier {

KernelStatus TranscodePagesCpu(const PageGeometry& src, std::span<const PageView> in, const PageGeometry& dst,
                               std::span<const MutablePageView> out, int threads) {
  if (in.size() != out.size()) return InvalidArgument("transcode batch: input and output counts differ");
  KVTIER_RETURN_IF_KERNEL_ERROR(CheckTranscodable(src, dst));
  const int n = static_cast<int>(in.size());
  const int workers = std::max(1, std::min(threads, n));
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
  auto work = [&] {
    for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1))
      if (!TranscodePageRef(src, in[i], dst, out[i]).ok()) failed = true;
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return failed ? InvalidArgument("transcode batch: a page lacks its parameter record") : KernelStatus::Ok();
}

}  // namespace kvtier
