// Calibrated static scales in the tiering layer (docs/calibration.md):
//   - Calibrator: collects per (layer, K|V, kv head, channel) min/max of the KV written to layouts in
//     calibration mode (BlockStore::Write feeds it), and snapshots them for export.
//   - StaticScaleSet: a validated scales file (the daemon parses it; daemon/static_scales_file.h).
//   - StaticScalesPolicy: a set plus the format and include/exclude layer patterns a layout uses it with.
//   - StaticScalePlan: the policy resolved for one layout: which layers are quantized with static scales,
//     the per-segment scale table the transcodes take, the patterns that matched no layer, and the count
//     of values clipped by the static scales. Owned by the Layout; every block of that layout whose
//     offload geometry has static segments refers to it (no per-block copy of the scales).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "kernels/calibration.h"
#include "kernels/format.h"
#include "kernels/page_geometry.h"
#include "tiering/sync.h"

namespace kvtier {

inline constexpr uint32_t kStaticScalesVersion = 1;

struct StaticScaleSet {
  uint64_t calibrated_layout_id = 0;  // provenance: the layout the statistics were collected on
  std::string model_name;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  std::vector<std::string> layer_names;  // empty when the calibrated layout had none
  std::string method = "minmax";
  bool symmetric = true;
  uint64_t token_count = 0;
  // int8 scales (absmax / 127), PageGeometry segment order (layer, K then V, head) then channel.
  std::vector<float> scales;
  uint64_t id = 0;  // content hash (StaticScaleSetId); part of the id of every layout that uses the set

  size_t Index(int layer, Operand op, int head, int channel) const {
    return (static_cast<size_t>((layer * 2 + static_cast<int>(op)) * num_kv_heads + head)) * head_dim + channel;
  }
};

// Checks a set on its own: shape bounds, scale count, every scale finite and > 0, method/symmetric
// supported. Messages name the first offending (layer, K|V, head, channel).
absl::Status ValidateStaticScaleSet(const StaticScaleSet& set);
// xxh3-64 of the set's content (shape, names, method, scales), never 0.
uint64_t StaticScaleSetId(const StaticScaleSet& set);

struct StaticScalesPolicy {
  std::shared_ptr<const StaticScaleSet> set;
  Format format = Format::kInt8;              // int8, fp8_e4m3 or fp8_e5m2
  std::vector<std::string> include = {"*"};   // layer patterns (precision_policy.h forms; globs over names)
  std::vector<std::string> exclude;           // exclude wins
};

struct StaticScalePlan {
  std::shared_ptr<const StaticScaleSet> set;
  Format format = Format::kInt8;
  std::vector<std::string> include, exclude;
  std::vector<bool> static_layers;               // [num_layers]: quantized with static scales
  std::vector<std::string> unmatched_patterns;   // "include 'x'" / "exclude 'y'": matched no layer
  std::vector<float> table;                      // per-format scales, [num_segments * head_dim]
  std::atomic<uint64_t> clipped{0};              // values clipped by the static scales (page-outs)

  int num_static_layers() const;
  // Canonical text for the layout id.
  std::string Fingerprint() const;
};

// Resolves `policy` for a layout: the set must have been calibrated for the same num_layers,
// num_kv_heads and head_dim (and the same layer names when both have names). Patterns that match no layer
// are listed in unmatched_patterns, not errors.
absl::StatusOr<std::unique_ptr<StaticScalePlan>> ResolveStaticScales(const StaticScalesPolicy& policy,
                                                                     const LayoutShape& shape,
                                                                     const std::vector<std::string>& layer_names);

// Calibration mode. Thread-safe.
class Calibrator {
 public:
  // Starts (or restarts, clearing earlier statistics) calibration of `layout_id`, or of every layout
  // when 0.
  void Start(uint64_t layout_id);
  // Stops collecting; statistics stay for export. Returns false if nothing was being calibrated.
  bool Stop();
  bool active() const { return active_.load(std::memory_order_relaxed); }
  // Adds activation pages written to a layout (ignored unless that layout is being calibrated).
  void Observe(uint64_t layout_id, const PageGeometry& activation, std::span<const uint8_t* const> pages);
  // The statistics of one layout; NotFound if it has none. layout_id 0: the only calibrated layout
  // (FailedPrecondition when there are several).
  absl::StatusOr<std::pair<uint64_t, CalibrationStats>> Snapshot(uint64_t layout_id) const;
  // Layouts with statistics, and whether collection is on.
  std::vector<std::pair<uint64_t, uint64_t>> Layouts() const;  // (layout id, tokens)
  uint64_t target() const;

 private:
  std::atomic<bool> active_{false};
  mutable Mutex mu_;
  uint64_t target_ ABSL_GUARDED_BY(mu_) = 0;  // 0: every layout
  absl::flat_hash_map<uint64_t, CalibrationStats> stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
