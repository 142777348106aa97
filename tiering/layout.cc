#include "tiering/layout.h"

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "tiering/kernel_status.h"

namespace kvtier {

absl::StatusOr<const Layout*> LayoutRegistry::Register(const LayoutSpec& spec) {
  if (spec.activation != Format::kFp16 && spec.activation != Format::kBf16)
    return absl::InvalidArgumentError("layout activation dtype must be fp16 or bf16");
  auto act = PageGeometry::Uniform(spec.shape, DefaultCodec(spec.activation, Operand::kKey),
                                   DefaultCodec(spec.activation, Operand::kValue));
  if (!act.ok()) return ToStatus(act.status());
  auto resolved = Resolve(spec.policy, spec.shape, spec.layer_names);
  if (!resolved.ok())
    return absl::InvalidArgumentError(absl::StrCat("precision policy: ", resolved.status().message()));
  if (resolved->resident_first_block.page_bytes() != resolved->resident.page_bytes() ||
      resolved->resident_first_block.param_bytes() != resolved->resident.param_bytes())
    return absl::InvalidArgumentError(
        "precision policy: first-block (sink) rules must not change the GPU-resident page size; "
        "apply them to the offload tier");
  if (!spec.layer_names.empty() && static_cast<int>(spec.layer_names.size()) != spec.shape.num_layers)
    return absl::InvalidArgumentError("layer_names must name every layer or none");

  std::shared_ptr<StaticScalePlan> static_plan;
  std::string static_fingerprint;
  if (spec.static_scales) {
    auto plan = ResolveStaticScales(*spec.static_scales, spec.shape, spec.layer_names);
    if (!plan.ok()) return plan.status();
    for (const SegmentPlacement& p : resolved->resident.segments())
      if (p.codec.grouping != Grouping::kNone)
        return absl::InvalidArgumentError(
            "static scales need an unquantized (fp16/bf16) GPU-resident format; the policy quantizes resident pages");
    const StaticScalePlan& sp = **plan;
    auto offload = PageGeometry::Create(spec.shape, [&](int layer, Operand op, int head) {
      return sp.static_layers[layer] ? SegmentCodec{sp.format, Grouping::kStaticChannel, 0}
                                     : resolved->resident.segment(layer, op, head).codec;  // excluded: unquantized
    });
    if (!offload.ok()) return ToStatus(offload.status());
    resolved->offload = *offload;
    resolved->offload_first_block = *std::move(offload);
    static_fingerprint = "|" + sp.Fingerprint();
    static_plan = std::move(*plan);
  }

  const std::string canonical =
      absl::StrCat("L", spec.shape.num_layers, "H", spec.shape.num_kv_heads, "D", spec.shape.head_dim, "T",
                   spec.shape.block_size, "A", static_cast<int>(spec.activation), "|", spec.policy_fingerprint,
                   static_fingerprint);
  const uint64_t id = XXH3_64bits(canonical.data(), canonical.size()) | 1;  // never 0

  MutexLock lock(&mu_);
  auto it = layouts_.find(id);
  if (it != layouts_.end()) return it->second.get();
  auto layout = std::make_unique<Layout>(Layout{id, spec.shape, spec.activation, std::move(*act),
                                                std::move(resolved->resident), std::move(resolved->offload),
                                                std::move(resolved->offload_first_block), spec.model_name,
                                                std::move(static_plan), spec});
  const Layout* out = layout.get();
  layouts_.emplace(id, std::move(layout));
  return out;
}

const Layout* LayoutRegistry::Find(uint64_t id) const {
  MutexLock lock(&mu_);
  auto it = layouts_.find(id);
  return it == layouts_.end() ? nullptr : it->second.get();
}

uint64_t LayoutRegistry::StaticScaleClipped() const {
  MutexLock lock(&mu_);
  uint64_t n = 0;
  for (const auto& [id, l] : layouts_)
    if (l->static_plan) n += l->static_plan->clipped.load(std::memory_order_relaxed);
  return n;
}

size_t LayoutRegistry::size() const {
  MutexLock lock(&mu_);
  return layouts_.size();
}

}  // namespace kvtier
