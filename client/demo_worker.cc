// kvtier-demo-worker: an engine worker stand-in that drives kvtierd through the client library with
// self-verifying KV (kernels/testing/kv_oracle.h), for the README demo and the end-to-end tests.
//   --role=writer  writes the KV of a prompt and commits its full blocks, then releases them
//   --role=reader  looks a longer prompt up (pin + page-in), verifies every hit block against the
//                  oracle, then writes the KV of the blocks that missed (prefill of the remainder)
// Common flags: --socket=PATH --tokens=N (prompt length) --extra=N (reader: tokens beyond the shared
// prefix) --prompt_seed=S --name=NAME --hold_ms=MS (keep the session and its pins this long before
// exiting). Prints one JSON line with what happened; exits 1 if any block failed verification.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_format.h"
#include "client/cli_args.h"
#include "client/client.h"
#include "client/prompt_kv.h"
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
  if (role == "writer") {
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
