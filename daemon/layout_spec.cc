#include "daemon/layout_spec.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace kvtier {

absl::StatusOr<SegmentCodec> ToSegmentCodec(const kvtier::v1::CodecSpec& spec, Operand op) {
  const auto format = ParseFormat(spec.format());
  if (!format) return absl::InvalidArgumentError(absl::StrCat("unknown format '", spec.format(), "'"));
  SegmentCodec codec = DefaultCodec(*format, op);
  if (!spec.grouping().empty()) {
    const auto g = ParseGrouping(spec.grouping());
    if (!g) return absl::InvalidArgumentError(absl::StrCat("unknown grouping '", spec.grouping(), "'"));
    codec.grouping = *g;
  }
  if (spec.group_size() > 1024) return absl::InvalidArgumentError("group_size above 1024");
  if (spec.group_size() != 0) codec.group_size = static_cast<uint16_t>(spec.group_size());
  return codec;
}

absl::StatusOr<PrecisionPolicy> ToPrecisionPolicy(const kvtier::v1::PrecisionPolicy& wire) {
  PrecisionPolicy policy;
  struct Default {
    const kvtier::v1::CodecSpec& spec;
    Operand op;
    SegmentCodec* out;
  };
  for (const Default& d : {Default{wire.resident_key(), Operand::kKey, &policy.resident_key},
                           Default{wire.resident_value(), Operand::kValue, &policy.resident_value},
                           Default{wire.offload_key(), Operand::kKey, &policy.offload_key},
                           Default{wire.offload_value(), Operand::kValue, &policy.offload_value}}) {
    if (d.spec.format().empty()) continue;  // keep PrecisionPolicy's default (fp16)
    auto c = ToSegmentCodec(d.spec, d.op);
    if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat("precision policy: ", c.status().message()));
    *d.out = *c;
  }
  auto add_rules = [&](const auto& rules, RuleTiers tiers, const char* kind) -> absl::Status {
    int index = 0;
    for (const kvtier::v1::PolicyRule& r : rules) {
      PrecisionRule rule;
      rule.name = absl::StrCat(kind, "[", index++, "]");
      rule.tiers = tiers;
      if (r.layers_size()) rule.layers.assign(r.layers().begin(), r.layers().end());
      rule.exclude_layers.assign(r.exclude().begin(), r.exclude().end());
      rule.heads.assign(r.heads().begin(), r.heads().end());
      rule.first_block_only = r.first_block_only();
      if (r.has_key()) {
        auto c = ToSegmentCodec(r.key(), Operand::kKey);
        if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat(rule.name, ": ", c.status().message()));
        rule.key = *c;
      }
      if (r.has_value()) {
        auto c = ToSegmentCodec(r.value(), Operand::kValue);
        if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat(rule.name, ": ", c.status().message()));
        rule.value = *c;
      }
      policy.rules.push_back(std::move(rule));
    }
    return absl::OkStatus();
  };
  if (auto st = add_rules(wire.resident_rules(), RuleTiers::kResident, "resident_rules"); !st.ok()) return st;
  if (auto st = add_rules(wire.offload_rules(), RuleTiers::kOffload, "offload_rules"); !st.ok()) return st;
  const KernelStatus v = policy.Validate();
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat("precision policy: ", v.message()));
  return policy;
}

absl::StatusOr<LayoutSpec> ToLayoutSpec(const kvtier::v1::LayoutSpec& wire,
                                        const kvtier::v1::PrecisionPolicy& fallback) {
  LayoutSpec spec;
  spec.shape = {wire.num_layers(), wire.num_kv_heads(), wire.head_dim(), wire.block_size()};
  switch (wire.dtype()) {
    case kvtier::v1::ACTIVATION_DTYPE_FP16:
    case kvtier::v1::ACTIVATION_DTYPE_UNSPECIFIED: spec.activation = Format::kFp16; break;
    case kvtier::v1::ACTIVATION_DTYPE_BF16: spec.activation = Format::kBf16; break;
    default: return absl::InvalidArgumentError("unknown activation dtype");
  }
  kvtier::v1::PrecisionPolicy policy = fallback;
  // Static scales come from the daemon's config (the service adds them) or LoadStaticScales; they are part
  // of the layout id through the scale set's content hash, not through a file name.
  policy.clear_static_scales();
  if (wire.has_policy()) {
    const auto& p = wire.policy();
    if (p.has_static_scales())
      return absl::InvalidArgumentError(
          "policy.static_scales cannot be set by RegisterLayout; configure default_policy.static_scales or call "
          "LoadStaticScales");
    if (p.has_resident_key()) *policy.mutable_resident_key() = p.resident_key();
    if (p.has_resident_value()) *policy.mutable_resident_value() = p.resident_value();
    if (p.has_offload_key()) *policy.mutable_offload_key() = p.offload_key();
    if (p.has_offload_value()) *policy.mutable_offload_value() = p.offload_value();
    if (p.resident_rules_size() || p.offload_rules_size()) {
      policy.clear_resident_rules();
      policy.clear_offload_rules();
      *policy.mutable_resident_rules() = p.resident_rules();
      *policy.mutable_offload_rules() = p.offload_rules();
    }
  }
  auto converted = ToPrecisionPolicy(policy);
  if (!converted.ok()) return converted.status();
  spec.policy = std::move(*converted);
  spec.layer_names.assign(wire.layer_names().begin(), wire.layer_names().end());
  std::string fp;
  {
    google::protobuf::io::StringOutputStream out(&fp);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);  // map-free messages, but say so: the id must be stable
    policy.SerializeToCodedStream(&coded);
  }
  for (const auto& n : spec.layer_names) absl::StrAppend(&fp, "|", n);
  spec.policy_fingerprint = fp;
  spec.model_name = wire.model_name();
  return spec;
}

}  // namespace kvtier
