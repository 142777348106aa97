// The stress driver's workload model: its options, the layouts it registers and the prompt space.
//
// Prompts are enumerable so that any process (a worker, the post-crash verifier) can regenerate them:
// prompt (layout l, family f, variant v) is family f's shared prefix followed by variant v's own
// continuation and a partial tail. Variants >= variants_per_family are one-off prompts built from a
// worker's private seed (never looked up by anyone else). Block b of a prompt holds
// KeyedBlockSeed(prompt, block_size, b, layout tag) content (kernels/testing/kv_oracle.h), so a block
// served for the wrong prompt, the wrong layout or half-copied is caught wherever it turns up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "client/cli_args.h"
#include "kernels/page_geometry.h"
#include "kernels/testing/kv_oracle.h"
#include "kvtier/v1/kvtier.pb.h"

namespace kvtier::stress {

struct Options {
  std::string mode = "stress";  // stress | crash | soak
  std::string socket;           // the daemon's socket (spawned daemons get one in `dir`)
  std::string kvtierd;          // path of kvtierd to spawn; empty: drive an already running daemon
  std::string dir;              // work dir (socket, SSD tier, logs); default /tmp/kvtier-stress-<pid>
  std::string daemon_args;      // extra kvtierd flags, space-separated
  std::string fault_spec;       // passed to kvtierd as --fault_spec
  std::string json;             // write the report here too
  int workers = 4;
  double duration_s = 30;
  int rounds = 20;  // crash mode
  int crash_min_ms = 300, crash_max_ms = 2500;
  int verify_prompts = 0;    // prompts verified after each restart and at the end; 0: all of them
  double sample_s = 10;      // soak mode
  int kill_every_ms = 3000;  // mean time between random worker kills (0: never)
  int admin_every_ms = 300;  // mean time between operator actions (0: none)
  int families = 48, variants = 6;
  int hold = 4;                                   // prompts a worker keeps pinned
  uint64_t gpu_min = 2 << 20, gpu_max = 8 << 20;  // the operator resizes the tiers within these
  uint64_t host_min = 4 << 20, host_max = 16 << 20;
  uint64_t ssd_bytes = 64 << 20;
  int lease_ms = 3000;
  // A served value further than this from the oracle (relative to its segment's absmax) makes the block
  // wrong (all segments) or torn (some). One int8 step is 1/127; repeated page-out/in cycles re-quantize
  // and drift by a fraction of a step each (counted separately as drift), while a misrouted or half-
  // copied block is off by O(1).
  double tolerance = 4.0 / 127.0;
  int hang_ms = 0;  // a call slower than this counts as hung (0: 3 x io timeout + 5 s)
  int io_timeout_ms = 2000;
  uint64_t seed = 1;
  bool flush = true;      // use Flush/Drain when the daemon has them
  bool keep_dir = false;  // keep --dir after a passing run (it is always kept after a failure)

  static Options FromArgs(const CliArgs& a);
};

struct StressLayout {
  kvtier::v1::LayoutSpec spec;
  Format dtype;
  uint64_t tag;  // oracle key
};

// Two small layouts of different shape and dtype: blocks cross tiers quickly and misrouting between
// layouts is visible.
std::vector<StressLayout> StressLayouts();

struct PromptId {
  int layout = 0, family = 0, variant = 0;
  uint64_t private_seed = 0;  // one-off prompts only
  uint64_t Packed() const { return (uint64_t(layout) << 40) | (uint64_t(family) << 20) | uint64_t(variant); }
};

std::vector<int32_t> MakePrompt(const Options& o, const PromptId& id, int block_size);

}  // namespace kvtier::stress
