#include "tests/reliability/stress_model.h"

#include <unistd.h>

#include <cstdlib>

namespace kvtier::stress {
namespace v1 = kvtier::v1;

Options Options::FromArgs(const CliArgs& a) {
  Options o;
  o.mode = a.Get("mode", o.mode);
  o.kvtierd = a.Get("kvtierd");
  o.dir = a.Get("dir", "/tmp/kvtier-stress-" + std::to_string(getpid()));
  o.socket = a.Get("socket", o.kvtierd.empty() ? "" : o.dir + "/kvtierd.sock");
  o.daemon_args = a.Get("daemon_args");
  o.fault_spec = a.Get("fault_spec");
  o.json = a.Get("json");
  o.workers = static_cast<int>(a.GetInt("workers", o.workers));
  o.duration_s = std::strtod(a.Get("duration_s", "30").c_str(), nullptr);
  o.rounds = static_cast<int>(a.GetInt("rounds", o.rounds));
  o.crash_min_ms = static_cast<int>(a.GetInt("crash_min_ms", o.crash_min_ms));
  o.crash_max_ms = static_cast<int>(a.GetInt("crash_max_ms", o.crash_max_ms));
  o.verify_prompts = static_cast<int>(a.GetInt("verify_prompts", o.verify_prompts));
  o.sample_s = std::strtod(a.Get("sample_s", "10").c_str(), nullptr);
  o.kill_every_ms = static_cast<int>(a.GetInt("kill_every_ms", o.kill_every_ms));
  o.admin_every_ms = static_cast<int>(a.GetInt("admin_every_ms", o.admin_every_ms));
  o.families = static_cast<int>(a.GetInt("families", o.families));
  o.variants = static_cast<int>(a.GetInt("variants", o.variants));
  o.hold = static_cast<int>(a.GetInt("hold", o.hold));
  o.gpu_min = a.GetInt("gpu_min", o.gpu_min);
  o.gpu_max = a.GetInt("gpu_max", o.gpu_max);
  o.host_min = a.GetInt("host_min", o.host_min);
  o.host_max = a.GetInt("host_max", o.host_max);
  o.ssd_bytes = a.GetInt("ssd_bytes", o.ssd_bytes);
  o.lease_ms = static_cast<int>(a.GetInt("lease_ms", o.lease_ms));
  if (a.Has("tolerance")) o.tolerance = std::strtof(a.Get("tolerance").c_str(), nullptr);
  o.io_timeout_ms = static_cast<int>(a.GetInt("io_timeout_ms", o.io_timeout_ms));
  o.hang_ms = static_cast<int>(a.GetInt("hang_ms", 3 * o.io_timeout_ms + 5000));
  o.seed = a.GetInt("seed", o.seed);
  o.flush = a.Get("flush", "true") == "true";
  o.keep_dir = a.Has("keep_dir");
  return o;
}

std::vector<StressLayout> StressLayouts() {
  std::vector<StressLayout> out;
  {
    v1::LayoutSpec l;
    l.set_num_layers(2);
    l.set_num_kv_heads(2);
    l.set_head_dim(64);
    l.set_block_size(16);
    l.set_dtype(v1::ACTIVATION_DTYPE_FP16);
    l.set_model_name("stress-fp16-2L");
    out.push_back({l, Format::kFp16, 0x1001});
  }
  {
    v1::LayoutSpec l;
    l.set_num_layers(3);
    l.set_num_kv_heads(1);
    l.set_head_dim(128);
    l.set_block_size(16);
    l.set_dtype(v1::ACTIVATION_DTYPE_BF16);
    l.set_model_name("stress-bf16-3L");
    out.push_back({l, Format::kBf16, 0x2002});
  }
  return out;
}

std::vector<int32_t> MakePrompt(const Options& o, const PromptId& id, int block_size) {
  std::vector<int32_t> p;
  auto append = [&](uint64_t seed, int n) {
    for (int i = 0; i < n; ++i) p.push_back(static_cast<int32_t>(testing::SplitMix64(seed + i) % 128000));
  };
  // Family prefix: 2..8 blocks, the same for every variant (and layout: keys differ by layout anyway).
  const uint64_t fam = testing::SplitMix64(o.seed * 1000003 + static_cast<uint64_t>(id.family));
  append(fam, (2 + id.family % 7) * block_size);
  const bool one_off = id.variant >= o.variants;
  const uint64_t var = one_off ? testing::SplitMix64(id.private_seed)
                               : testing::SplitMix64(fam ^ (0x5151ULL + static_cast<uint64_t>(id.variant)));
  append(var, (1 + id.variant % 4) * block_size + 5);  // whole blocks plus a partial (private) tail
  return p;
}

}  // namespace kvtier::stress
