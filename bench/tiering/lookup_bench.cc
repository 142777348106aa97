// In-process longest-prefix lookup of long sequences (issue 6 target: a 32K-token sequence, p99 < 50 us).
//
// One BlockStore on the host device holds a committed 32K-token prompt (2048 blocks of 16 tokens) plus
// `--distractors` other committed prompts, so the prefix index is not trivially small. Each benchmark
// iteration is one BlockStore::Lookup of the whole prompt: chained XXH3-128 keys for every block, the
// index walk, and (for the pinned variant) pinning every hit and releasing it again. Per-call latencies
// are collected and reported as p50/p99/max counters; the Threads(N) variants show the same calls under
// contention from N concurrent callers.
//
// The page size does not enter the lookup path (only keys and entries do), so the layout is small (2
// layers, 2 KV heads, head dim 64) to keep the store in a few hundred MiB.
//
//   build/release/bench/lookup_bench --benchmark_out=lookup.json --benchmark_out_format=json
#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "tiering/block_store.h"

namespace kvtier {
namespace {

constexpr LayoutShape kShape{2, 2, 64, 16};
constexpr int kDistractorPrompts = 64;

std::vector<int32_t> Prompt(int tokens, int salt) {
  std::vector<int32_t> p(tokens);
  for (int i = 0; i < tokens; ++i) p[i] = static_cast<int32_t>((i * 7919 + salt * 104729) % 128000);
  return p;
}

// A store with `tokens`-long prompt 0 and kDistractorPrompts shorter prompts committed; built once per size.
struct Fixture {
  std::unique_ptr<BlockStore> store;
  const Layout* layout = nullptr;
  std::vector<int32_t> prompt;

  explicit Fixture(int tokens) {
    BlockStoreOptions o;
    const uint64_t page = 2ull * 2 * kShape.num_layers * kShape.num_kv_heads * kShape.head_dim * kShape.block_size;  // fp16 K and V
    const int blocks = tokens / kShape.block_size + kDistractorPrompts * 64;
    o.gpu_pool_bytes = page * static_cast<uint64_t>(blocks) * 2;
    o.host_tier_bytes = 64ull << 20;
    o.max_blocks_per_call = 1 << 16;
    store = std::make_unique<BlockStore>(o, MakeHostDeviceBackend(1), MakeAlignedHostAllocator());
    LayoutSpec spec;
    spec.shape = kShape;
    spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
    spec.policy_fingerprint = "fp16/int8";
    layout = *store->RegisterLayout(spec);
    prompt = Prompt(tokens, 0);
    Commit(1, prompt);
    for (int d = 1; d <= kDistractorPrompts; ++d) Commit(1 + d, Prompt(64 * kShape.block_size, d));
  }

  void Commit(SessionId session, const std::vector<int32_t>& p) {
    const int bs = kShape.block_size;
    const int n = static_cast<int>(p.size()) / bs;
    auto blocks = store->Allocate(session, layout->id, n);
    if (!blocks.ok()) std::abort();
    std::vector<CommitItem> items;
    items.reserve(n);
    for (int b = 0; b < n; ++b) {
      items.push_back({(*blocks)[b].id, "", std::vector<int32_t>(p.begin() + b * bs, p.begin() + (b + 1) * bs),
                       /*chain_previous=*/b > 0});
    }
    if (!store->Commit(session, "tenant", items).ok()) std::abort();
    store->ReleaseSession(session);  // committed blocks stay in the index, unpinned
  }
};

Fixture& FixtureFor(int tokens) {
  static std::mutex mu;
  static std::vector<std::pair<int, std::unique_ptr<Fixture>>> fixtures;
  std::lock_guard<std::mutex> lock(mu);
  for (auto& [t, f] : fixtures) {
    if (t == tokens) return *f;
  }
  fixtures.emplace_back(tokens, std::make_unique<Fixture>(tokens));
  return *fixtures.back().second;
}

void BM_Lookup(benchmark::State& state, bool pin) {
  const int tokens = static_cast<int>(state.range(0));
  Fixture& f = FixtureFor(tokens);
  const SessionId session = 1000 + static_cast<SessionId>(state.thread_index());
  std::vector<double> mine;
  mine.reserve(1 << 16);
  int64_t blocks = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto hit = f.store->Lookup(session, "tenant", f.layout->id, f.prompt, pin, /*promote=*/false);
    if (pin && hit.ok()) {
      std::vector<BlockId> ids;
      ids.reserve(hit->blocks.size());
      for (const auto& b : hit->blocks) ids.push_back(b.block_id);
      if (!f.store->Release(session, ids).ok()) state.SkipWithError("release failed");
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (!hit.ok() || hit->matched_tokens != tokens) {
      state.SkipWithError("lookup did not match the whole prompt");
      break;
    }
    blocks += static_cast<int64_t>(hit->blocks.size());
    mine.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  state.SetItemsProcessed(blocks);
  std::sort(mine.begin(), mine.end());
  auto pct = [&](double q) {
    return mine.empty() ? 0.0 : mine[std::min(mine.size() - 1, static_cast<size_t>(q * mine.size()))];
  };
  // Per-thread percentiles, averaged over threads by Google Benchmark (kAvgThreads); max is the largest.
  state.counters["p50_us"] = benchmark::Counter(pct(0.50), benchmark::Counter::kAvgThreads);
  state.counters["p99_us"] = benchmark::Counter(pct(0.99), benchmark::Counter::kAvgThreads);
  state.counters["max_us"] = benchmark::Counter(mine.empty() ? 0.0 : mine.back(), benchmark::Counter::kAvgThreads);
  state.counters["blocks"] = static_cast<double>(tokens / kShape.block_size);
}

void BM_LookupOnly(benchmark::State& state) { BM_Lookup(state, /*pin=*/false); }
void BM_LookupPinRelease(benchmark::State& state) { BM_Lookup(state, /*pin=*/true); }

BENCHMARK(BM_LookupOnly)->Arg(4096)->Arg(32768)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LookupPinRelease)->Arg(4096)->Arg(32768)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LookupOnly)->Arg(32768)->Threads(2)->Threads(8)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LookupPinRelease)->Arg(32768)->Threads(2)->Threads(8)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
