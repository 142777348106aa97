// kvtier-demo-worker: an engine worker stand-in that drives kvtierd through the client library with
// self-verifying KV (kernels/testing/kv_oracle.h), for the README demo and the end-to-end tests.
//   --role=writer  writes the KV of a prompt and commits its full blocks, then releases them
//   --role=reader  looks a longer prompt up (pin + page-in), verifies every hit block against the
//                  oracle, then writes the KV of the blocks that missed (prefill of the remainder)
//   --role=attend  pins the prompt's cached prefix and runs daemon-served decode attention over it for
//                  --duration_ms (random queries, layer by layer), checking every output against the CPU
//                  reference over the oracle's pages; prints a "ready" line after its first checked
//                  Attend and a summary line at the end (exit 1 on any mismatch or error)
// Common flags: --socket=PATH --tokens=N (prompt length) --extra=N (reader: tokens beyond the shared
// prefix) --prompt_seed=S --name=NAME --hold_ms=MS (keep the session and its pins this long before
// exiting). Prints one JSON line with what happened; exits 1 if any block failed verification.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "client/cli_args.h"
#include "client/client.h"
#include "client/prompt_kv.h"
#include "kernels/attention/attention.h"
#include "kernels/testing/kv_oracle.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

// The demo model: a small Llama-like GQA shape (8 layers, 4 KV heads of 128, block 16, fp16 KV).
v1::LayoutSpec DemoLayout() {
  v1::LayoutSpec l;
  l.set_num_layers(8);
  l.set_num_kv_heads(4);
  l.set_head_dim(128);
  l.set_block_size(16);
  l.set_dtype(v1::ACTIVATION_DTYPE_FP16);
  l.set_model_name("demo-llama-8L");
  return l;
}

std::vector<int32_t> MakePrompt(int n, uint64_t seed) {
  std::vector<int32_t> p(n);
  uint64_t s = seed;
  for (int i = 0; i < n; ++i) p[i] = static_cast<int32_t>(testing::SplitMix64(s++) % 128000);
  return p;
}

int Run(const CliArgs& args) {
  const std::string role = args.Get("role", "writer");
  ClientOptions o;
  o.client_name = args.Get("name", "demo-" + role);
  o.tenant = args.Get("tenant");
  o.token = args.Get("token");
  if (args.Has("socket")) o.target = "unix:" + args.Get("socket");
  auto client = Client::Connect(o);
  if (!client.ok()) {
    std::fprintf(stderr, "%s: %s\n", o.client_name.c_str(), client.status().ToString().c_str());
    return 2;
  }
  Client& c = **client;
  const v1::LayoutSpec wire = DemoLayout();
  auto reg = c.RegisterLayout(wire);
  if (!reg.ok()) {
    std::fprintf(stderr, "RegisterLayout: %s\n", reg.status().ToString().c_str());
    return 2;
  }
  const LayoutShape shape{wire.num_layers(), wire.num_kv_heads(), wire.head_dim(), wire.block_size()};
  auto geometry = PageGeometry::Uniform(shape, DefaultCodec(Format::kFp16, Operand::kKey),
                                        DefaultCodec(Format::kFp16, Operand::kValue));
  const int tokens = static_cast<int>(args.GetInt("tokens", 1000));
  const uint64_t seed = static_cast<uint64_t>(args.GetInt("prompt_seed", 1));
  std::vector<int32_t> prompt = MakePrompt(tokens, seed);
  if (role == "reader") {  // the same prefix followed by this worker's own continuation
    const auto extra = MakePrompt(static_cast<int>(args.GetInt("extra", 200)), seed ^ 0xabcdefULL);
    prompt.insert(prompt.end(), extra.begin(), extra.end());
  }
  auto fill = [&](int b, uint8_t* page) {
    testing::FillActivationPage(*geometry, Format::kFp16, testing::BlockSeed(prompt, shape.block_size, b), page);
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed_ms = [&] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };

  int exit_code = 0;
  if (role == "attend") {
    auto hit = c.Lookup(reg->layout_id(), prompt, /*pin=*/true, /*promote=*/true);
    if (!hit.ok() || hit->blocks_size() == 0) {
      std::fprintf(stderr, "attend lookup: %s\n", hit.ok() ? "no cached prefix" : hit.status().ToString().c_str());
      return 1;
    }
    const int nblocks = hit->blocks_size(), seq_len = nblocks * shape.block_size;
    // The reference pool: the oracle's fp16 pages at slots 0..n-1.
    std::string pool(static_cast<size_t>(nblocks) * geometry->page_bytes(), '\0');
    for (int b = 0; b < nblocks; ++b) fill(b, reinterpret_cast<uint8_t*>(pool.data()) + b * geometry->page_bytes());
    std::vector<int32_t> table(nblocks);
    for (int b = 0; b < nblocks; ++b) table[b] = b;
    const int hq = 2 * shape.num_kv_heads;
    std::mt19937 rng(static_cast<uint32_t>(getpid()));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    int64_t iterations = 0, mismatches = 0, errors = 0;
    const double duration_ms = static_cast<double>(args.GetInt("duration_ms", 2000));
    do {
      const int layer = static_cast<int>(iterations % shape.num_layers);
      std::vector<uint16_t> q(static_cast<size_t>(hq) * shape.head_dim), ref(q.size());
      for (auto& x : q) x = FloatToHalf(dist(rng));
      v1::AttendRequest req;
      req.set_layout_id(reg->layout_id());
      req.set_layer(layer);
      req.set_num_q_heads(hq);
      auto* seq = req.add_sequences();
      for (const auto& b : hit->blocks()) seq->add_block_ids(b.block_id());
      seq->set_seq_len(seq_len);
      seq->set_num_queries(1);
      req.set_queries(std::string(reinterpret_cast<const char*>(q.data()), q.size() * 2));
      auto got = c.Attend(req);
      const DecodeParams p{&*geometry, {reinterpret_cast<const uint8_t*>(pool.data()), nullptr, nblocks},
                           {1, &seq_len, table.data(), nblocks}, layer, hq, shape.head_dim, ActDtype::kFp16,
                           q.data(), ref.data(), 0.0f};
      if (!got.ok() || !PagedDecodeRef(p).ok() || got->output().size() != ref.size() * 2) {
        ++errors;
      } else {
        const auto* out = reinterpret_cast<const uint16_t*>(got->output().data());
        for (size_t i = 0; i < ref.size(); ++i)
          if (!(std::fabs(HalfToFloat(out[i]) - HalfToFloat(ref[i])) <= 2e-3f)) ++mismatches;
      }
      if (iterations++ == 0) {
        std::printf("{\"role\":\"attend\",\"name\":\"%s\",\"ready\":1,\"pinned_blocks\":%d}\n",
                    o.client_name.c_str(), nblocks);
        std::fflush(stdout);
      }
    } while (elapsed_ms() < duration_ms);
    std::printf("{\"role\":\"attend\",\"name\":\"%s\",\"done\":1,\"iterations\":%lld,\"mismatches\":%lld,"
                "\"errors\":%lld,\"ms\":%.1f}\n",
                o.client_name.c_str(), static_cast<long long>(iterations), static_cast<long long>(mismatches),
                static_cast<long long>(errors), elapsed_ms());
    exit_code = mismatches == 0 && errors == 0 ? 0 : 1;
  } else if (role == "writer") {
    auto w = WritePromptKv(c, reg->layout_id(), shape, reg->activation_page_bytes(), prompt, fill);
    if (!w.ok()) {
      std::fprintf(stderr, "write: %s\n", w.status().ToString().c_str());
      return 1;
    }
    if (!args.Has("hold_ms")) {  // an engine releases its blocks when the request ends
      if (auto st = c.Release(w->block_ids); !st.ok()) return 1;
      if (w->tail_block_id) (void)c.Release(std::span<const uint64_t>(&w->tail_block_id, 1));
    }
    std::printf("{\"role\":\"writer\",\"name\":\"%s\",\"session\":%llu,\"tokens\":%d,\"committed_blocks\":%zu,"
                "\"deduplicated\":%d,\"private_tail\":%s,\"ms\":%.1f}\n",
                o.client_name.c_str(), static_cast<unsigned long long>(c.session_id()), tokens, w->block_ids.size(),
                w->deduplicated, w->tail_block_id ? "true" : "false", elapsed_ms());
  } else {
    auto r = ReadPrefixKv(c, reg->layout_id(), reg->activation_page_bytes(), prompt);
    if (!r.ok()) {
      std::fprintf(stderr, "read: %s\n", r.status().ToString().c_str());
      return 1;
    }
    // int8 offload bound: half a quantization step of the segment's range, plus fp16 rounding.
    const float tolerance = 0.5f / 127.0f + 2e-3f;
    int64_t bad = 0;
    float worst = 0;
    int from_lower_tier = 0;
    for (size_t b = 0; b < r->pages.size(); ++b) {
      const auto check = testing::CheckActivationPage(*geometry, Format::kFp16,
                                                      testing::BlockSeed(prompt, shape.block_size, b),
                                                      reinterpret_cast<const uint8_t*>(r->pages[b].data()), tolerance);
      bad += check.bad_values;
      worst = std::max(worst, check.max_rel_error);
      from_lower_tier += check.max_rel_error > 1e-3f;
    }
    const int hits = static_cast<int>(r->pages.size());
    std::vector<uint64_t> hit_ids;
    for (const auto& b : r->lookup.blocks()) hit_ids.push_back(b.block_id());
    const std::string parent = hits ? r->lookup.blocks(hits - 1).key() : "";
    auto w = WritePromptKv(c, reg->layout_id(), shape, reg->activation_page_bytes(), prompt, fill, hits, parent);
    if (!w.ok()) {
      std::fprintf(stderr, "prefill: %s\n", w.status().ToString().c_str());
      return 1;
    }
    if (!args.Has("hold_ms")) {
      (void)c.Release(hit_ids);
      (void)c.Release(w->block_ids);
      if (w->tail_block_id) (void)c.Release(std::span<const uint64_t>(&w->tail_block_id, 1));
    }
    std::printf("{\"role\":\"reader\",\"name\":\"%s\",\"session\":%llu,\"prompt_tokens\":%zu,\"matched_blocks\":%d,"
                "\"matched_tokens\":%d,\"verified_blocks\":%d,\"bad_values\":%lld,\"max_rel_error\":%.5f,"
                "\"blocks_with_quantization_error\":%d,\"prefilled_blocks\":%zu,\"ms\":%.1f}\n",
                o.client_name.c_str(), static_cast<unsigned long long>(c.session_id()), prompt.size(), hits,
                r->lookup.matched_tokens(), hits, static_cast<long long>(bad), worst, from_lower_tier,
                w->block_ids.size(), elapsed_ms());
    exit_code = bad == 0 ? 0 : 1;
  }
  std::fflush(stdout);
  if (args.Has("hold_ms")) std::this_thread::sleep_for(std::chrono::milliseconds(args.GetInt("hold_ms", 0)));
  return exit_code;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) { return kvtier::Run(kvtier::CliArgs::Parse(argc, argv)); }
