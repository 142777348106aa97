// Precision policy: which codec each segment of a page gets, separately for the GPU-resident copy of a
// block and for its offload copy (host/SSD), with a variant for the first block of each sequence.
//
// A policy is a plain struct that the daemon fills from its config (proto) or that code writes directly:
// defaults for the resident and offload formats plus an ordered list of rules. For a segment
// (layer, K|V, kv head) of a tier, the codec is the default of that tier, overridden by every rule that
// matches, in order (the LAST matching rule wins). A rule matches when
//   - its tier is that tier or kBoth,
//   - the layer matches one of `layers` (an empty list selects every layer) and none of `exclude_layers`
//     (exclude wins),
//   - the head is in `heads` (empty: every head),
//   - it sets a codec for that operand (`key` for K, `value` for V),
//   - and, for rules with `first_block_only`, the block is the first of its sequence.
//
// Layer patterns:
//   "*"                 every layer
//   "5", "-1"           one layer index; negative counts from the end (-1 is the last layer)
//   "0-3", "-4--1"      an inclusive range of indices (either end may be negative)
//   anything else       a glob (`*` any run of characters, `?` one character) over layer NAMES, such as
//                       "model.layers.*.self_attn"; needs the names passed to Resolve()
// A pattern that selects no layer of the layout is an error (it is almost always a typo).
//
// Examples (see tests/kernels/precision_policy_test.cc):
//   fp8 everywhere:            offload_key = offload_value = fp8_e4m3
//   K8V4:                      offload_key = int8 per-channel, offload_value = int4 per-token group 32
//   keep layer 0 and the last: rule {layers {"0", "-1"}, key = value = fp16}  (or exclude_layers on the
//                              rule that quantizes)
//   attention sinks:           rule {first_block_only, key = value = fp16}
//   head 3 of every layer:     rule {heads {3}, key = int8 per-channel}
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/format.h"
#include "kernels/page_geometry.h"
#include "kernels/status.h"

namespace kvtier {

// The two copies of a block a policy describes.
enum class PolicyTier : uint8_t { kResident = 0, kOffload = 1 };
// Which tiers a rule applies to.
enum class RuleTiers : uint8_t { kBoth = 0, kResident = 1, kOffload = 2 };

struct PrecisionRule {
  std::string name;  // optional; quoted in error messages
  RuleTiers tiers = RuleTiers::kBoth;
  std::vector<std::string> layers;          // include patterns (see the header comment); empty: every layer
  std::vector<std::string> exclude_layers;  // a layer matching one of these is never selected
  std::vector<int32_t> heads;               // kv heads; empty: every head
  bool first_block_only = false;            // applies only to the first block of a sequence
  std::optional<SegmentCodec> key;          // codec for K segments; unset: K untouched by this rule
  std::optional<SegmentCodec> value;        // codec for V segments
};

struct PrecisionPolicy {
  SegmentCodec resident_key = DefaultCodec(Format::kFp16, Operand::kKey);
  SegmentCodec resident_value = DefaultCodec(Format::kFp16, Operand::kValue);
  SegmentCodec offload_key = DefaultCodec(Format::kFp16, Operand::kKey);
  SegmentCodec offload_value = DefaultCodec(Format::kFp16, Operand::kValue);
  std::vector<PrecisionRule> rules;

  // One format for K and V of both tiers (the format's default grouping).
  static PrecisionPolicy Uniform(Format resident, Format offload);
  // K int8 per-channel, V int4 per-token in groups of 32 offloaded; `resident` on the GPU.
  static PrecisionPolicy K8V4(Format resident = Format::kFp16);

  // Checks what can be checked without a layout: pattern syntax, codec/grouping combinations, head
  // indices >= 0, every rule sets a codec. Messages name the rule ("rule 2 'sinks': ...").
  KernelStatus Validate() const;
};

// The pages a policy yields for one layout. The first block of a sequence may use different geometries
// (attention sinks); when no rule is first_block_only they equal the ordinary ones.
struct ResolvedPolicy {
  PageGeometry resident;
  PageGeometry offload;
  PageGeometry resident_first_block;
  PageGeometry offload_first_block;
  bool first_block_differs = false;

  const PageGeometry& geometry(PolicyTier tier, bool first_block) const {
    if (tier == PolicyTier::kResident) return first_block ? resident_first_block : resident;
    return first_block ? offload_first_block : offload;
  }
};

// The codec of one segment. Validates nothing: call after Validate()/ValidateFor() succeeded.
SegmentCodec CodecFor(const PrecisionPolicy& policy, const LayoutShape& shape, std::span<const std::string> layer_names,
                      PolicyTier tier, int layer, Operand op, int head, bool first_block);

// Validate() plus the layout-dependent checks: indices within the layout, name patterns only with names
// (one per layer), every pattern selecting some layer, every head < num_kv_heads, every codec valid for
// the layout's dims.
KernelStatus ValidateFor(const PrecisionPolicy& policy, const LayoutShape& shape,
                         std::span<const std::string> layer_names = {});

// Validates and builds the four page geometries.
KernelOr<ResolvedPolicy> Resolve(const PrecisionPolicy& policy, const LayoutShape& shape,
                                 std::span<const std::string> layer_names = {});

// A codec from its config fields (kvtier.v1.CodecSpec): format name; grouping name, empty for the
// format's default for K or V (DefaultCodec); group_size, 0 for the default (per_token: 32 for int4, the
// whole row for int8). Returns InvalidArgument with the reason.
KernelOr<SegmentCodec> MakeCodec(std::string_view format, std::string_view grouping, uint32_t group_size, Operand op);

// The same from one string: "fp16", "fp8_e4m3", "int8", "int8:per_token", "int4:per_token:64".
KernelOr<SegmentCodec> ParseCodecSpec(std::string_view spec, Operand op);
std::string CodecSpecString(const SegmentCodec& codec);

// True when `pattern` (one of the layer pattern forms above) selects `layer`; `name` may be empty.
bool LayerPatternMatches(std::string_view pattern, int layer, int num_layers, std::string_view name);

}  // namespace kvtier
