#include "tiering/static_scales.h"

#include <xxhash.h>

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/half.h"
#include "kernels/precision_policy.h"
#include "kernels/static_transcode.h"

namespace kvtier {

absl::Status ValidateStaticScaleSet(const StaticScaleSet& s) {
  const LayoutShape shape{s.num_layers, s.num_kv_heads, s.head_dim, 16};
  if (const KernelStatus st = ValidateShape(shape); !st.ok())
    return absl::InvalidArgumentError(absl::StrCat("static scales: ", st.message()));
  if (!s.layer_names.empty() && static_cast<int>(s.layer_names.size()) != s.num_layers)
    return absl::InvalidArgumentError(
        absl::StrCat("static scales: ", s.layer_names.size(), " layer names for ", s.num_layers, " layers"));
  if (s.method != "minmax")
    return absl::InvalidArgumentError(absl::StrCat("static scales: unknown method '", s.method, "' (minmax)"));
  if (!s.symmetric)
    return absl::InvalidArgumentError("static scales: asymmetric scales are not supported (kvtier's int8 is symmetric)");
  const size_t want = static_cast<size_t>(s.num_layers) * 2 * s.num_kv_heads * s.head_dim;
  if (s.scales.size() != want)
    return absl::InvalidArgumentError(absl::StrCat("static scales: ", s.scales.size(), " scales, the shape needs ", want));
  for (int l = 0; l < s.num_layers; ++l)
    for (Operand op : {Operand::kKey, Operand::kValue})
      for (int h = 0; h < s.num_kv_heads; ++h)
        for (int c = 0; c < s.head_dim; ++c) {
          const float v = s.scales[s.Index(l, op, h, c)];
          if (!std::isfinite(v) || !(v > 0.0f))
            return absl::InvalidArgumentError(absl::StrCat("static scales: layer ", l, " ", OperandName(op), " head ", h,
                                                           " channel ", c, ": scale ", v,
                                                           " is not a positive finite number"));
        }
  return absl::OkStatus();
}

uint64_t StaticScaleSetId(const StaticScaleSet& s) {
  std::string c = absl::StrCat("v", kStaticScalesVersion, "|L", s.num_layers, "H", s.num_kv_heads, "D", s.head_dim, "|",
                               s.method, s.symmetric ? "|sym|" : "|asym|", absl::StrJoin(s.layer_names, ","), "|");
  c.append(reinterpret_cast<const char*>(s.scales.data()), s.scales.size() * sizeof(float));
  return XXH3_64bits(c.data(), c.size()) | 1;
}

int StaticScalePlan::num_static_layers() const {
  int n = 0;
  for (bool b : static_layers) n += b;
  return n;
}

std::string StaticScalePlan::Fingerprint() const {
  return absl::StrCat("static:", absl::Hex(set->id, absl::kZeroPad16), ":", std::string(GetFormatInfo(format).name), ":in=",
                      absl::StrJoin(include, ","), ":ex=", absl::StrJoin(exclude, ","));
}

absl::StatusOr<std::unique_ptr<StaticScalePlan>> ResolveStaticScales(const StaticScalesPolicy& policy,
                                                                     const LayoutShape& shape,
                                                                     const std::vector<std::string>& names) {
  if (!policy.set) return absl::InvalidArgumentError("static scales: no scale set");
  const StaticScaleSet& set = *policy.set;
  if (policy.format != Format::kInt8 && policy.format != Format::kFp8E4m3 && policy.format != Format::kFp8E5m2)
    return absl::InvalidArgumentError(absl::StrCat("static scales: format ", std::string(GetFormatInfo(policy.format).name),
                                                   " cannot use static scales (int8, fp8_e4m3, fp8_e5m2)"));
  if (set.num_layers != shape.num_layers || set.num_kv_heads != shape.num_kv_heads || set.head_dim != shape.head_dim)
    return absl::InvalidArgumentError(absl::StrCat(
        "static scales were calibrated for another layout: ", set.num_layers, " layers x ", set.num_kv_heads,
        " kv heads x head_dim ", set.head_dim, " (layout ", set.calibrated_layout_id, "), this layout is ",
        shape.num_layers, " x ", shape.num_kv_heads, " x ", shape.head_dim));
  if (!set.layer_names.empty() && !names.empty())
    for (int l = 0; l < shape.num_layers; ++l)
      if (set.layer_names[l] != names[l])
        return absl::InvalidArgumentError(absl::StrCat("static scales were calibrated for another layout: layer ", l,
                                                       " is '", set.layer_names[l], "' in the scales file and '",
                                                       names[l], "' in this layout"));
  auto plan = std::make_unique<StaticScalePlan>();
  plan->set = policy.set;
  plan->format = policy.format;
  plan->include = policy.include.empty() ? std::vector<std::string>{"*"} : policy.include;
  plan->exclude = policy.exclude;
  for (const auto* list : {&plan->include, &plan->exclude})
    for (const std::string& p : *list)
      if (p.empty()) return absl::InvalidArgumentError("static scales: empty layer pattern");
  auto name_of = [&](int l) -> std::string_view {
    if (!names.empty()) return names[l];
    if (!set.layer_names.empty()) return set.layer_names[l];
    return {};
  };
  plan->static_layers.assign(shape.num_layers, false);
  for (int l = 0; l < shape.num_layers; ++l) {
    bool in = false;
    for (const std::string& p : plan->include) in = in || LayerPatternMatches(p, l, shape.num_layers, name_of(l));
    for (const std::string& p : plan->exclude) in = in && !LayerPatternMatches(p, l, shape.num_layers, name_of(l));
    plan->static_layers[l] = in;
  }
  for (const auto& [kind, list] : {std::pair{"include", &plan->include}, std::pair{"exclude", &plan->exclude}})
    for (const std::string& p : *list) {
      bool any = false;
      for (int l = 0; l < shape.num_layers && !any; ++l) any = LayerPatternMatches(p, l, shape.num_layers, name_of(l));
      if (!any) plan->unmatched_patterns.push_back(absl::StrCat(kind, " '", p, "'"));
    }
  // Per-format scales: int8 uses the file's scale rounded up to fp16 (as a per-block int8 scale is);
  // fp8 the same range over its own code range: s * 127 / max_finite.
  plan->table.resize(set.scales.size());
  const float limit = StaticCodeLimit(policy.format);
  for (size_t i = 0; i < set.scales.size(); ++i)
    plan->table[i] = policy.format == Format::kInt8 ? HalfToFloat(FloatToHalfRoundUp(set.scales[i]))
                                                    : set.scales[i] * 127.0f / limit;
  return plan;
}

void Calibrator::Start(uint64_t layout_id) {
  MutexLock lock(&mu_);
  target_ = layout_id;
  stats_.clear();
  active_.store(true, std::memory_order_relaxed);
}

bool Calibrator::Stop() {
  MutexLock lock(&mu_);
  return active_.exchange(false, std::memory_order_relaxed);
}

void Calibrator::Observe(uint64_t layout_id, const PageGeometry& activation, std::span<const uint8_t* const> pages) {
  if (!active()) return;
  CalibrationStats local(activation.shape());  // collected outside the lock, merged under it
  if (!local.AddPages(activation, pages).ok()) return;
  MutexLock lock(&mu_);
  if (!active_.load(std::memory_order_relaxed) || (target_ != 0 && target_ != layout_id)) return;
  auto it = stats_.find(layout_id);
  if (it == stats_.end())
    stats_.emplace(layout_id, std::move(local));
  else
    it->second.Merge(local);
}

absl::StatusOr<std::pair<uint64_t, CalibrationStats>> Calibrator::Snapshot(uint64_t layout_id) const {
  MutexLock lock(&mu_);
  if (layout_id == 0) {
    if (stats_.empty()) return absl::NotFoundError("no calibration statistics (start calibration and write KV first)");
    if (stats_.size() > 1)
      return absl::FailedPreconditionError(
          absl::StrCat(stats_.size(), " layouts have calibration statistics; name one (layout_id)"));
    return std::pair(stats_.begin()->first, stats_.begin()->second);
  }
  auto it = stats_.find(layout_id);
  if (it == stats_.end()) return absl::NotFoundError(absl::StrCat("no calibration statistics for layout ", layout_id));
  return std::pair(it->first, it->second);
}

std::vector<std::pair<uint64_t, uint64_t>> Calibrator::Layouts() const {
  MutexLock lock(&mu_);
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const auto& [id, s] : stats_) out.emplace_back(id, s.tokens());
  return out;
}

uint64_t Calibrator::target() const {
  MutexLock lock(&mu_);
  return target_;
}

}  // namespace kvtier
