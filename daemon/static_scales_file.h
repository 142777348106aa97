// Scales files (docs/calibration.md): kvtier.v1.StaticScalesFile in protobuf text format, written by
// `kvtierctl calibrate export` from calibration statistics and read by the static-scales policy (config
// default_policy.static_scales.file, or the LoadStaticScales RPC). Every input is untrusted: a file that
// does not parse, has an unknown version, a wrong shape or a NaN/negative/zero scale is rejected with a
// message naming the problem.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/calibration.h"
#include "kvtier/v1/config.pb.h"
#include "tiering/static_scales.h"

namespace kvtier {

// The text of a scales file for calibration statistics of a layout.
std::string FormatStaticScalesFile(const CalibrationStats& stats, uint64_t layout_id, std::string_view model_name,
                                   const std::vector<std::string>& layer_names);

// The text of a scales file for a loaded set (scales only; no min/max). Parsing it gives the same set id.
std::string FormatStaticScaleSet(const StaticScaleSet& set);

// Keeps a copy of a set in `<ssd_dir>/scales/<id as 16 hex digits>.kvscales` (written once, atomically), so
// that the set SSD blocks were quantized with can always be configured again after a restart.
absl::Status PersistStaticScaleSet(const std::string& ssd_dir, const StaticScaleSet& set);

// Parses and validates a scales file's text. `origin` names it in messages.
absl::StatusOr<std::shared_ptr<const StaticScaleSet>> ParseStaticScalesFile(std::string_view text,
                                                                            std::string_view origin);

// A policy from its config form and the set it uses; `format` empty means int8.
absl::StatusOr<StaticScalesPolicy> MakeStaticScalesPolicy(std::shared_ptr<const StaticScaleSet> set,
                                                          const kvtier::v1::StaticScalesPolicy& wire);

// Reads config.default_policy.static_scales (file and patterns); nullopt-like empty set when no file is named.
absl::StatusOr<std::optional<StaticScalesPolicy>> LoadConfiguredStaticScales(const kvtier::v1::DaemonConfig& config);

}  // namespace kvtier
