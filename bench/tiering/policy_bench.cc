// Eviction policies side by side on one trace (bench/results/policy_hit_rates.{json,md}).
//
// The real BlockStore on the host device (CPU transcodes; the GPU tier is host memory standing in for the
// pool) with small tiers, driven by a trace of requests as an engine would send them: look the prompt up
// (where each matched block is counted as a hit in its tier), bring the matched prefix to the GPU tier,
// write and commit the blocks that were missing, release. The trace mixes
//   hot:      a shared system prompt of S blocks followed by a short unique question (2 blocks), and
//   one-shot: long unique prompts (L blocks) that are never seen again (a scan),
// in a seeded random order, so that between two hot requests the one-shot traffic alone can fill the GPU
// tier. Every policy sees the same trace; the baseline is lru (the store's original order).
//
//   policy_bench [--requests=N] [--hot_share=0.25] [--system_blocks=8] [--oneshot_blocks=16]
//                [--gpu_blocks=64] [--host_blocks=128] [--seed=1] [--json=FILE]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/testing/kv_oracle.h"
#include "tiering/block_store.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

struct Args {
  int requests = 3000;
  double hot_share = 0.25;
  int system_blocks = 8;
  int oneshot_blocks = 16;
  int gpu_blocks = 64;
  int host_blocks = 128;
  int seed = 1;
  std::string json;
};

double Flag(int argc, char** argv, const char* name, double def) {
  const std::string prefix = std::string("--") + name + "=";
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind(prefix, 0) == 0) return std::atof(argv[i] + prefix.size());
  return def;
}

struct Result {
  std::string gpu_policy, host_policy;
  uint64_t requested = 0, hit_gpu = 0, hit_host = 0;
  uint64_t hot_requested = 0, hot_hit_gpu = 0, hot_hit_any = 0;
  double seconds = 0;
};

constexpr LayoutShape kShape{2, 2, 64, 16};

Result Run(const Args& a, const std::string& gpu_policy, const std::string& host_policy) {
  BlockStoreOptions o;
  o.policy.gpu.eviction = gpu_policy;
  o.policy.host.eviction = host_policy;
  LayoutSpec spec;
  spec.shape = kShape;
  spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
  spec.policy_fingerprint = "fp16/int8";
  // Sizes in blocks of this layout: resident fp16 pages on the GPU tier, int8 records on the host tier.
  const uint64_t resident = 2ull * 2 * 2 * 16 * 64 * 2;
  o.gpu_pool_bytes = resident * a.gpu_blocks;
  o.host_tier_bytes = 1 << 30;  // set below once the record size is known
  o.gpu_high_watermark = 1.0;   // evict on demand only: the same decisions whatever the mover's timing
  o.gpu_low_watermark = 1.0;
  BlockStore store(o, MakeHostDeviceBackend(1), MakeAlignedHostAllocator());
  auto layout = store.RegisterLayout(spec);
  if (!layout.ok()) {
    std::fprintf(stderr, "layout: %s\n", layout.status().ToString().c_str());
    std::exit(1);
  }
  const Layout& l = **layout;
  (void)store.SetLimits(0, l.offload_record_bytes() * a.host_blocks + l.offload_record_bytes(true) * 8);
  const int bs = kShape.block_size;
  std::mt19937_64 rng(a.seed);
  std::vector<int32_t> system(a.system_blocks * bs);
  for (auto& t : system) t = static_cast<int32_t>(rng() % 30000);
  int32_t next_unique = 40000;
  std::string page(l.activation_geometry.page_bytes(), '\0');
  Result r{gpu_policy, host_policy};
  const auto started = std::chrono::steady_clock::now();
  for (int q = 0; q < a.requests; ++q) {
    const bool hot = std::uniform_real_distribution<double>(0, 1)(rng) < a.hot_share;
    std::vector<int32_t> prompt;
    if (hot) prompt = system;
    const int unique_blocks = hot ? 2 : a.oneshot_blocks;
    for (int i = 0; i < unique_blocks * bs; ++i) prompt.push_back(next_unique++);
    const SessionId s = 1000 + q;
    const auto before = store.GetPolicyStats();
    auto hit = store.Lookup(s, "t", l.id, prompt, /*pin=*/true, /*promote=*/true);
    const auto after = store.GetPolicyStats();
    const int n = static_cast<int>(prompt.size()) / bs;
    r.requested += n;
    const uint64_t g = after.lookup_hits_by_tier[1] - before.lookup_hits_by_tier[1];
    const uint64_t h = after.lookup_hits_by_tier[2] - before.lookup_hits_by_tier[2];
    r.hit_gpu += g;
    r.hit_host += h;
    if (hot) {
      r.hot_requested += a.system_blocks;
      r.hot_hit_gpu += std::min<uint64_t>(g, a.system_blocks);
      r.hot_hit_any += std::min<uint64_t>(g + h, a.system_blocks);
    }
    const int have = hit.ok() ? static_cast<int>(hit->blocks.size()) : 0;
    if (have < n) {  // prefill the rest: allocate, write, commit under the matched prefix
      auto blocks = store.Allocate(s, l.id, n - have);
      if (blocks.ok()) {
        std::vector<BlockId> ids;
        std::vector<std::string_view> views;
        std::vector<CommitItem> items;
        for (int b = have; b < n; ++b) {
          testing::FillActivationPage(l.activation_geometry, Format::kFp16, testing::BlockSeed(prompt, bs, b),
                                      reinterpret_cast<uint8_t*>(page.data()));
          ids.push_back((*blocks)[b - have].id);
          items.push_back({ids.back(), b == have && have > 0 ? hit->blocks.back().key.ToBytes() : "",
                           std::vector<int32_t>(prompt.begin() + b * bs, prompt.begin() + (b + 1) * bs), b > have});
        }
        views.assign(ids.size(), page);
        if (store.Write(s, ids, views).ok()) (void)store.Commit(s, "t", items);
      }
    }
    store.ReleaseSession(s);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return r;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  using namespace kvtier;
  Args a;
  a.requests = static_cast<int>(Flag(argc, argv, "requests", a.requests));
  a.hot_share = Flag(argc, argv, "hot_share", a.hot_share);
  a.system_blocks = static_cast<int>(Flag(argc, argv, "system_blocks", a.system_blocks));
  a.oneshot_blocks = static_cast<int>(Flag(argc, argv, "oneshot_blocks", a.oneshot_blocks));
  a.gpu_blocks = static_cast<int>(Flag(argc, argv, "gpu_blocks", a.gpu_blocks));
  a.host_blocks = static_cast<int>(Flag(argc, argv, "host_blocks", a.host_blocks));
  a.seed = static_cast<int>(Flag(argc, argv, "seed", a.seed));
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind("--json=", 0) == 0) a.json = argv[i] + 7;
  SetLogLevel(LogLevel::kWarning);
  std::vector<Result> results;
  for (const char* p : {"lru", "slru", "arc", "cost"}) results.push_back(Run(a, p, p));
  std::printf("trace: %d requests, %.0f%% hot (system prompt %d blocks + 2), one-shot %d blocks; GPU tier %d blocks, "
              "host tier %d blocks\n",
              a.requests, 100 * a.hot_share, a.system_blocks, a.oneshot_blocks, a.gpu_blocks, a.host_blocks);
  std::printf("%-6s %10s %10s %10s %14s %14s %8s\n", "policy", "gpu hit", "host hit", "total", "sys-prompt gpu",
              "sys-prompt any", "seconds");
  std::string json = absl::StrFormat(
      "{\"device\": \"host device backend (CPU transcodes), 2 vCPU dev VM\", \"trace\": {\"requests\": %d, "
      "\"hot_share\": %g, \"system_blocks\": %d, \"hot_unique_blocks\": 2, \"oneshot_blocks\": %d, \"seed\": %d}, "
      "\"gpu_blocks\": %d, \"host_blocks\": %d, \"results\": [",
      a.requests, a.hot_share, a.system_blocks, a.oneshot_blocks, a.seed, a.gpu_blocks, a.host_blocks);
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    const double n = static_cast<double>(r.requested), hn = static_cast<double>(std::max<uint64_t>(r.hot_requested, 1));
    std::printf("%-6s %9.1f%% %9.1f%% %9.1f%% %13.1f%% %13.1f%% %8.2f\n", r.gpu_policy.c_str(), 100 * r.hit_gpu / n,
                100 * r.hit_host / n, 100 * (r.hit_gpu + r.hit_host) / n, 100 * r.hot_hit_gpu / hn,
                100 * r.hot_hit_any / hn, r.seconds);
    absl::StrAppendFormat(&json,
                          "%s{\"policy\": \"%s\", \"blocks_requested\": %llu, \"hit_gpu\": %llu, \"hit_host\": %llu, "
                          "\"system_prompt_blocks_requested\": %llu, \"system_prompt_hit_gpu\": %llu, "
                          "\"system_prompt_hit_any\": %llu, \"seconds\": %.3f}",
                          i ? ", " : "", r.gpu_policy, static_cast<unsigned long long>(r.requested),
                          static_cast<unsigned long long>(r.hit_gpu), static_cast<unsigned long long>(r.hit_host),
                          static_cast<unsigned long long>(r.hot_requested),
                          static_cast<unsigned long long>(r.hot_hit_gpu), static_cast<unsigned long long>(r.hot_hit_any),
                          r.seconds);
  }
  json += "]}\n";
  if (!a.json.empty()) std::ofstream(a.json) << json;
  return 0;
}
