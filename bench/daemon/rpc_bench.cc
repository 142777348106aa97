// rpc_bench: latency and throughput of kvtierd's hot RPCs over its unix socket, with N concurrent
// workers (threads, each with its own channel and session, as separate engine processes would have).
//   rpc_bench --socket=PATH [--workers=1,8,32] [--seconds=5] [--prompt_blocks=64] [--commit_batch=256]
// Each worker registers the same small layout, commits its own chains of blocks (Allocate + Commit in
// batches, no data written: the daemon's bookkeeping is what is measured) and looks up random shared and
// private prompts. Prints one JSON object with p50/p99/max per RPC and blocks/s through Commit.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "client/absl_runtime.h"
#include "client/cli_args.h"
#include "client/client.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;
using Clock = std::chrono::steady_clock;

struct Samples {
  std::vector<double> lookup_us, commit_us, allocate_us;
  int64_t committed_blocks = 0;
  int64_t errors = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

v1::LayoutSpec BenchLayout() {
  v1::LayoutSpec l;
  l.set_num_layers(4);  // small pages: the bench measures the daemon's bookkeeping, not page-outs
  l.set_num_kv_heads(1);
  l.set_head_dim(64);
  l.set_block_size(16);
  l.set_model_name("rpc-bench");
  return l;
}

void Worker(const std::string& socket, int id, double seconds, int prompt_blocks, int commit_batch, Samples* out) {
  ClientOptions o;
  o.target = "unix:" + socket;
  o.client_name = "rpc-bench-" + std::to_string(id);
  auto c = Client::Connect(o);
  if (!c.ok()) {
    ++out->errors;
    return;
  }
  auto reg = (*c)->RegisterLayout(BenchLayout());
  if (!reg.ok()) {
    ++out->errors;
    return;
  }
  std::mt19937_64 rng(id);
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  int64_t chain = 0;
  while (Clock::now() < end) {
    // Commit a fresh chain of commit_batch blocks (one Allocate, one Commit), then release it.
    auto t0 = Clock::now();
    auto alloc = (*c)->Allocate(reg->layout_id(), commit_batch);
    auto t1 = Clock::now();
    if (!alloc.ok()) {
      ++out->errors;
      continue;
    }
    out->allocate_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    std::vector<v1::CommitEntry> entries(commit_batch);
    for (int b = 0; b < commit_batch; ++b) {
      entries[b].set_block_id(alloc->block_ids(b));
      if (b > 0) entries[b].set_chain_previous(true);
      for (int t = 0; t < 16; ++t) entries[b].add_tokens(static_cast<int32_t>((id << 20) ^ (chain << 8) ^ (b * 16 + t)));
    }
    ++chain;
    t0 = Clock::now();
    auto committed = (*c)->Commit(entries);
    t1 = Clock::now();
    if (!committed.ok()) {
      ++out->errors;
      continue;
    }
    out->commit_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    out->committed_blocks += commit_batch;
    std::vector<uint64_t> ids(alloc->block_ids().begin(), alloc->block_ids().end());
    (void)(*c)->Release(ids);
    // Lookups of a prompt_blocks-block prompt: half of them hit this worker's chain, half miss early.
    for (int i = 0; i < 8; ++i) {
      std::vector<int32_t> tokens(static_cast<size_t>(prompt_blocks) * 16);
      const bool hit = rng() & 1;
      for (size_t t = 0; t < tokens.size(); ++t)
        tokens[t] = hit ? static_cast<int32_t>((id << 20) ^ ((chain - 1) << 8) ^ t) : static_cast<int32_t>(rng());
      t0 = Clock::now();
      auto r = (*c)->Lookup(reg->layout_id(), tokens, false, false);
      t1 = Clock::now();
      if (!r.ok()) ++out->errors;
      out->lookup_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
  }
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  using namespace kvtier;
  ConfigureAbslForLowLatency();  // as kvtierd does; the workers stand for engines linking the C++ client
  const CliArgs args = CliArgs::Parse(argc, argv);
  const std::string socket = args.Get("socket");
  if (socket.empty()) {
    std::fprintf(stderr, "usage: rpc_bench --socket=PATH [--workers=1,8,32] [--seconds=5]\n");
    return 2;
  }
  const double seconds = static_cast<double>(args.GetInt("seconds", 5));
  const int prompt_blocks = static_cast<int>(args.GetInt("prompt_blocks", 64));
  const int commit_batch = static_cast<int>(args.GetInt("commit_batch", 256));
  std::vector<int> counts;
  std::stringstream ss(args.Get("workers", "1,8,32"));
  for (std::string part; std::getline(ss, part, ',');) counts.push_back(std::stoi(part));
  std::printf("{\"prompt_blocks\": %d, \"commit_batch\": %d, \"seconds\": %.0f, \"runs\": [\n", prompt_blocks,
              commit_batch, seconds);
  for (size_t r = 0; r < counts.size(); ++r) {
    const int n = counts[r];
    std::vector<Samples> samples(n);
    std::vector<std::thread> threads;
    const auto t0 = Clock::now();
    for (int w = 0; w < n; ++w)
      threads.emplace_back(Worker, socket, w + static_cast<int>(r) * 1000, seconds, prompt_blocks, commit_batch,
                           &samples[w]);
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    Samples all;
    for (auto& s : samples) {
      all.lookup_us.insert(all.lookup_us.end(), s.lookup_us.begin(), s.lookup_us.end());
      all.commit_us.insert(all.commit_us.end(), s.commit_us.begin(), s.commit_us.end());
      all.allocate_us.insert(all.allocate_us.end(), s.allocate_us.begin(), s.allocate_us.end());
      all.committed_blocks += s.committed_blocks;
      all.errors += s.errors;
    }
    std::printf("  {\"workers\": %d, \"lookups\": %zu, \"lookup_p50_us\": %.1f, \"lookup_p99_us\": %.1f, "
                "\"lookup_max_us\": %.1f, \"lookups_per_s\": %.0f, \"commit_p50_us\": %.1f, \"commit_p99_us\": %.1f, "
                "\"allocate_p50_us\": %.1f, \"allocate_p99_us\": %.1f, \"committed_blocks_per_s\": %.0f, "
                "\"errors\": %lld}%s\n",
                n, all.lookup_us.size(), Percentile(all.lookup_us, 0.5), Percentile(all.lookup_us, 0.99),
                Percentile(all.lookup_us, 1.0), all.lookup_us.size() / wall, Percentile(all.commit_us, 0.5),
                Percentile(all.commit_us, 0.99), Percentile(all.allocate_us, 0.5), Percentile(all.allocate_us, 0.99),
                all.committed_blocks / wall, static_cast<long long>(all.errors), r + 1 < counts.size() ? "," : "");
    std::fflush(stdout);
  }
  std::printf("]}\n");
  return 0;
}
