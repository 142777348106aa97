// Layout: a registered model shape with its page geometries —
//   activation: what engines write and read (fp16 or bf16 everywhere, no parameters),
//   resident:   the GPU-pool format (per the precision policy),
//   offload:    the host/SSD format (per the precision policy), with a variant for the first block of
//               each sequence when the policy keeps attention sinks at a higher precision.
// Layouts are immutable once registered; their id is a stable hash of the normalized spec, so that two
// workers registering the same model share blocks, and a restarted daemon recognizes its SSD records.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "tiering/sync.h"
#include "kernels/format.h"
#include "kernels/page_geometry.h"
#include "kernels/precision_policy.h"
#include "tiering/static_scales.h"

namespace kvtier {

struct LayoutSpec {
  LayoutShape shape;
  Format activation = Format::kFp16;  // fp16 or bf16
  PrecisionPolicy policy;               // resident and offload codecs per (layer, head, K|V)
  std::vector<std::string> layer_names;  // optional, for name patterns in the policy
  std::string policy_fingerprint;       // canonical text of the policy, part of the layout id
  std::string model_name;
  // Calibrated static scales for the offload copy (docs/calibration.md); part of the layout id.
  std::optional<StaticScalesPolicy> static_scales;
};

struct Layout {
  uint64_t id = 0;
  LayoutShape shape;
  Format activation = Format::kFp16;
  PageGeometry activation_geometry;
  PageGeometry resident;
  PageGeometry offload;
  PageGeometry offload_first_block;  // the first block of a sequence (equals `offload` without sink rules)
  std::string model_name;
  // With static scales: the layers quantized with them and their scale table; `offload` then has
  // static-scale segments (no per-block parameters) and the other layers unquantized.
  std::shared_ptr<StaticScalePlan> static_plan;
  LayoutSpec spec;  // as registered (layer names, policy; LoadStaticScales derives variants from it)

  const PageGeometry& offload_for(bool first_block) const { return first_block ? offload_first_block : offload; }
  // Bytes of one block in the host/SSD tiers: offload data followed by its parameter record.
  uint64_t offload_record_bytes(bool first_block = false) const {
    const PageGeometry& g = offload_for(first_block);
    return g.page_bytes() + g.param_bytes();
  }
};

// Thread-safe registry of layouts by id. Layout objects live as long as the registry.
class LayoutRegistry {
 public:
  // Validates the spec and returns the registered layout (the existing one if the spec is identical).
  absl::StatusOr<const Layout*> Register(const LayoutSpec& spec);
  // Null when unknown.
  const Layout* Find(uint64_t id) const;
  size_t size() const;
  // Values clipped by static scales, summed over the layouts that use them.
  uint64_t StaticScaleClipped() const;

 private:
  mutable Mutex mu_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Layout>> layouts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
