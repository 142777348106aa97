#include "daemon/layout_spec.h"

#include "absl/strings/str_cat.h"

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
  if (wire.has_policy()) {
    const auto& p = wire.policy();
    if (p.has_resident_key()) *policy.mutable_resident_key() = p.resident_key();
    if (p.has_resident_value()) *policy.mutable_resident_value() = p.resident_value();
    if (p.has_offload_key()) *policy.mutable_offload_key() = p.offload_key();
    if (p.has_offload_value()) *policy.mutable_offload_value() = p.offload_value();
    if (p.resident_rules_size() || p.offload_rules_size())
      return absl::InvalidArgumentError("per-layer/per-head policy rules are not accepted by this daemon version");
  }
  auto rk = ToSegmentCodec(policy.resident_key(), Operand::kKey);
  auto rv = ToSegmentCodec(policy.resident_value(), Operand::kValue);
  auto ok = ToSegmentCodec(policy.offload_key(), Operand::kKey);
  auto ov = ToSegmentCodec(policy.offload_value(), Operand::kValue);
  for (const auto* c : {&rk, &rv, &ok, &ov})
    if (!c->ok()) return absl::InvalidArgumentError(absl::StrCat("precision policy: ", c->status().message()));
  spec.resident = [k = *rk, v = *rv](int, Operand op, int) { return op == Operand::kKey ? k : v; };
  spec.offload = [k = *ok, v = *ov](int, Operand op, int) { return op == Operand::kKey ? k : v; };
  std::string fp;
  policy.SerializeToString(&fp);  // scalar-only messages serialize deterministically
  spec.policy_fingerprint = fp;
  spec.model_name = wire.model_name();
  return spec;
}

}  // namespace kvtier
