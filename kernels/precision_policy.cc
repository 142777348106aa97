#include "kernels/precision_policy.h"

#include <charconv>
#include <cstdio>

namespace kvtier {
namespace {

// An index pattern: "N", "-N", "A-B" with either end possibly negative. nullopt: not an index pattern.
struct IndexRange {
  int64_t first;
  int64_t last;
};

std::optional<int64_t> ParseInt(std::string_view s, size_t& pos) {
  const size_t start = pos;
  if (pos < s.size() && s[pos] == '-') ++pos;
  const size_t digits = pos;
  while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') ++pos;
  if (pos == digits || pos - digits > 9) return std::nullopt;
  int64_t v = 0;
  std::from_chars(s.data() + start, s.data() + pos, v);
  return v;
}

std::optional<IndexRange> ParseIndexPattern(std::string_view s) {
  size_t pos = 0;
  const auto a = ParseInt(s, pos);
  if (!a) return std::nullopt;
  if (pos == s.size()) return IndexRange{*a, *a};
  if (s[pos] != '-') return std::nullopt;
  ++pos;
  const auto b = ParseInt(s, pos);
  if (!b || pos != s.size()) return std::nullopt;
  return IndexRange{*a, *b};
}

bool LooksNumeric(std::string_view s) {
  for (char c : s)
    if (!(c == '-' || (c >= '0' && c <= '9'))) return false;
  return !s.empty();
}

// Glob with '*' (any run, possibly empty) and '?' (one character); iterative with one backtrack point.
bool GlobMatches(std::string_view pat, std::string_view s) {
  size_t p = 0, i = 0, star = std::string_view::npos, mark = 0;
  while (i < s.size()) {
    if (p < pat.size() && (pat[p] == '?' || pat[p] == s[i])) {
      ++p;
      ++i;
    } else if (p < pat.size() && pat[p] == '*') {
      star = p++;
      mark = i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

int64_t Absolute(int64_t index, int num_layers) { return index < 0 ? num_layers + index : index; }

std::string RuleLabel(size_t i, const PrecisionRule& r) {
  std::string s = "rule " + std::to_string(i);
  if (!r.name.empty()) s += " '" + r.name + "'";
  return s;
}

KernelStatus ValidatePatternSyntax(std::string_view p) {
  if (p.empty()) return InvalidArgument("empty layer pattern");
  if (LooksNumeric(p) && !ParseIndexPattern(p))
    return InvalidArgument("layer pattern '" + std::string(p) + "' is not N, -N or A-B");
  return KernelStatus::Ok();
}

bool TierMatches(RuleTiers rt, PolicyTier t) {
  return rt == RuleTiers::kBoth || (rt == RuleTiers::kResident) == (t == PolicyTier::kResident);
}

bool RuleSelectsLayer(const PrecisionRule& r, int layer, int num_layers, std::string_view name) {
  bool in = r.layers.empty();
  for (const auto& p : r.layers) in = in || LayerPatternMatches(p, layer, num_layers, name);
  if (!in) return false;
  for (const auto& p : r.exclude_layers)
    if (LayerPatternMatches(p, layer, num_layers, name)) return false;
  return true;
}

// A codec valid for some layout: the format/grouping combination and a group size that is a multiple of
// 16; whether the group size divides head_dim is checked by ValidateFor.
KernelStatus ValidateCodecAlone(const SegmentCodec& c) {
  const auto fi = static_cast<int>(c.format);
  if (fi < 0 || fi >= kNumFormats) return InvalidArgument("unknown format id " + std::to_string(fi));
  if (c.grouping == Grouping::kStaticChannel)
    return InvalidArgument("grouping static_channel comes from a static scales file (static_scales), not a codec");
  if (c.grouping == Grouping::kPerToken && c.group_size % 16 != 0)
    return InvalidArgument(std::string(GetFormatInfo(c.format).name) + ": group_size=" + std::to_string(c.group_size) +
                           " is not a multiple of 16");
  const int channels = c.grouping == Grouping::kPerToken && c.group_size ? c.group_size : 256;
  return ValidateCodec(c, SegmentDims{16, channels});
}

}  // namespace

bool LayerPatternMatches(std::string_view pattern, int layer, int num_layers, std::string_view name) {
  if (pattern == "*") return true;
  if (const auto r = ParseIndexPattern(pattern)) {
    const int64_t a = Absolute(r->first, num_layers), b = Absolute(r->last, num_layers);
    return layer >= a && layer <= b;
  }
  if (LooksNumeric(pattern) || name.empty()) return false;
  return GlobMatches(pattern, name);
}

PrecisionPolicy PrecisionPolicy::Uniform(Format resident, Format offload) {
  PrecisionPolicy p;
  p.resident_key = DefaultCodec(resident, Operand::kKey);
  p.resident_value = DefaultCodec(resident, Operand::kValue);
  p.offload_key = DefaultCodec(offload, Operand::kKey);
  p.offload_value = DefaultCodec(offload, Operand::kValue);
  return p;
}

PrecisionPolicy PrecisionPolicy::K8V4(Format resident) {
  PrecisionPolicy p = Uniform(resident, resident);
  p.offload_key = {Format::kInt8, Grouping::kPerChannel, 0};
  p.offload_value = {Format::kInt4, Grouping::kPerToken, 32};
  return p;
}

KernelStatus PrecisionPolicy::Validate() const {
  const std::pair<const char*, const SegmentCodec*> defaults[] = {{"resident_key", &resident_key},
                                                                  {"resident_value", &resident_value},
                                                                  {"offload_key", &offload_key},
                                                                  {"offload_value", &offload_value}};
  for (const auto& [what, codec] : defaults) {
    KernelStatus st = ValidateCodecAlone(*codec);
    if (!st.ok()) return InvalidArgument(std::string(what) + ": " + st.message());
  }
  for (size_t i = 0; i < rules.size(); ++i) {
    const PrecisionRule& r = rules[i];
    const std::string label = RuleLabel(i, r);
    if (!r.key && !r.value) return InvalidArgument(label + ": sets neither a key nor a value codec");
    for (const auto* list : {&r.layers, &r.exclude_layers})
      for (const auto& p : *list) {
        KernelStatus st = ValidatePatternSyntax(p);
        if (!st.ok()) return InvalidArgument(label + ": " + st.message());
      }
    for (int32_t h : r.heads)
      if (h < 0) return InvalidArgument(label + ": negative head index " + std::to_string(h));
    for (const auto& [what, codec] : {std::pair{"key", &r.key}, std::pair{"value", &r.value}}) {
      if (!*codec) continue;
      KernelStatus st = ValidateCodecAlone(**codec);
      if (!st.ok()) return InvalidArgument(label + " " + what + ": " + st.message());
    }
  }
  return KernelStatus::Ok();
}

KernelStatus ValidateFor(const PrecisionPolicy& policy, const LayoutShape& shape,
                         std::span<const std::string> layer_names) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateShape(shape));
  KVTIER_RETURN_IF_KERNEL_ERROR(policy.Validate());
  if (!layer_names.empty() && static_cast<int>(layer_names.size()) != shape.num_layers)
    return InvalidArgument("got " + std::to_string(layer_names.size()) + " layer names for " +
                           std::to_string(shape.num_layers) + " layers");
  const SegmentDims dims{shape.block_size, shape.head_dim};
  for (const auto& [what, codec] :
       {std::pair{"resident_key", &policy.resident_key}, std::pair{"resident_value", &policy.resident_value},
        std::pair{"offload_key", &policy.offload_key}, std::pair{"offload_value", &policy.offload_value}}) {
    KernelStatus st = ValidateCodec(*codec, dims);
    if (!st.ok()) return InvalidArgument(std::string(what) + ": " + st.message());
  }
  for (size_t i = 0; i < policy.rules.size(); ++i) {
    const PrecisionRule& r = policy.rules[i];
    const std::string label = RuleLabel(i, r);
    for (const auto* list : {&r.layers, &r.exclude_layers})
      for (const auto& p : *list) {
        if (const auto range = ParseIndexPattern(p)) {
          const int64_t a = Absolute(range->first, shape.num_layers), b = Absolute(range->last, shape.num_layers);
          if (a < 0 || a >= shape.num_layers || b < 0 || b >= shape.num_layers)
            return InvalidArgument(label + ": layer pattern '" + p + "' is outside the layout's " +
                                   std::to_string(shape.num_layers) + " layers");
          if (a > b) return InvalidArgument(label + ": layer range '" + p + "' is empty (first > last)");
          continue;
        }
        if (p == "*") continue;
        if (layer_names.empty())
          return InvalidArgument(label + ": layer name pattern '" + p + "' needs layer names, and none were given");
        bool any = false;
        for (const auto& n : layer_names) any = any || GlobMatches(p, n);
        if (!any) return InvalidArgument(label + ": layer name pattern '" + p + "' matches no layer");
      }
    for (int32_t h : r.heads)
      if (h >= shape.num_kv_heads)
        return InvalidArgument(label + ": head " + std::to_string(h) + " >= num_kv_heads " +
                               std::to_string(shape.num_kv_heads));
    for (const auto& [what, codec] : {std::pair{"key", &r.key}, std::pair{"value", &r.value}}) {
      if (!*codec) continue;
      KernelStatus st = ValidateCodec(**codec, dims);
      if (!st.ok()) return InvalidArgument(label + " " + what + ": " + st.message());
    }
    bool selects = false;
    for (int l = 0; l < shape.num_layers && !selects; ++l)
      selects = RuleSelectsLayer(r, l, shape.num_layers, layer_names.empty() ? "" : layer_names[l]);
    if (!selects) return InvalidArgument(label + ": its exclude patterns leave no layer selected");
  }
  return KernelStatus::Ok();
}

SegmentCodec CodecFor(const PrecisionPolicy& policy, const LayoutShape& shape, std::span<const std::string> layer_names,
                      PolicyTier tier, int layer, Operand op, int head, bool first_block) {
  const bool key = op == Operand::kKey;
  SegmentCodec codec = tier == PolicyTier::kResident ? (key ? policy.resident_key : policy.resident_value)
                                                     : (key ? policy.offload_key : policy.offload_value);
  const std::string_view name = layer_names.empty() ? std::string_view() : std::string_view(layer_names[layer]);
  for (const PrecisionRule& r : policy.rules) {
    const auto& c = key ? r.key : r.value;
    if (!c || !TierMatches(r.tiers, tier) || (r.first_block_only && !first_block)) continue;
    if (!r.heads.empty()) {
      bool in = false;
      for (int32_t h : r.heads) in = in || h == head;
      if (!in) continue;
    }
    if (RuleSelectsLayer(r, layer, shape.num_layers, name)) codec = *c;
  }
  return codec;
}

KernelOr<ResolvedPolicy> Resolve(const PrecisionPolicy& policy, const LayoutShape& shape,
                                 std::span<const std::string> layer_names) {
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateFor(policy, shape, layer_names));
  auto build = [&](PolicyTier tier, bool first) {
    return PageGeometry::Create(shape, [&](int layer, Operand op, int head) {
      return CodecFor(policy, shape, layer_names, tier, layer, op, head, first);
    });
  };
  auto resident = build(PolicyTier::kResident, false);
  auto offload = build(PolicyTier::kOffload, false);
  auto resident_first = build(PolicyTier::kResident, true);
  auto offload_first = build(PolicyTier::kOffload, true);
  for (const auto* g : {&resident, &offload, &resident_first, &offload_first})
    if (!g->ok()) return g->status();
  ResolvedPolicy out{*std::move(resident), *std::move(offload), *std::move(resident_first), *std::move(offload_first),
                     false};
  for (int s = 0; s < out.resident.num_segments() && !out.first_block_differs; ++s)
    out.first_block_differs = !(out.resident.segment(s).codec == out.resident_first_block.segment(s).codec) ||
                              !(out.offload.segment(s).codec == out.offload_first_block.segment(s).codec);
  return out;
}

KernelOr<SegmentCodec> MakeCodec(std::string_view format, std::string_view grouping, uint32_t group_size, Operand op) {
  const auto f = ParseFormat(format);
  if (!f)
    return InvalidArgument("unknown format '" + std::string(format) + "' (fp16, bf16, fp8_e4m3, fp8_e5m2, int8, int4, fp4_e2m1)");
  SegmentCodec codec = DefaultCodec(*f, op);
  if (!grouping.empty()) {
    const auto g = ParseGrouping(grouping);
    if (!g)
      return InvalidArgument("unknown grouping '" + std::string(grouping) +
                             "' (none, per_segment, per_channel, per_token)");
    codec.grouping = *g;
    // The format's default group size for that grouping (per_token: V's, per_channel: K's).
    const SegmentCodec def = DefaultCodec(*f, *g == Grouping::kPerToken ? Operand::kValue : Operand::kKey);
    codec.group_size = def.grouping == *g ? def.group_size : 0;
  }
  if (group_size != 0) {
    if (codec.grouping != Grouping::kPerToken && !(codec.grouping == Grouping::kPerChannel && *f == Format::kFp4E2m1))
      return InvalidArgument("a group size needs per_token grouping (or fp4_e2m1 per_channel)");
    if (group_size > 4096) return InvalidArgument("group size " + std::to_string(group_size) + " too large");
    codec.group_size = static_cast<uint16_t>(group_size);
  }
  KVTIER_RETURN_IF_KERNEL_ERROR(ValidateCodecAlone(codec));
  return codec;
}

KernelOr<SegmentCodec> ParseCodecSpec(std::string_view spec, Operand op) {
  std::string_view parts[3];
  int n = 0;
  for (size_t start = 0;;) {
    if (n == 3) return InvalidArgument("codec spec '" + std::string(spec) + "' has more than 3 ':' parts");
    const size_t colon = spec.find(':', start);
    parts[n++] = spec.substr(start, colon == std::string_view::npos ? std::string_view::npos : colon - start);
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  uint32_t group = 0;
  if (n == 3) {
    const auto [ptr, ec] = std::from_chars(parts[2].data(), parts[2].data() + parts[2].size(), group);
    if (ec != std::errc() || ptr != parts[2].data() + parts[2].size() || group == 0)
      return InvalidArgument("codec spec '" + std::string(spec) + "': bad group size '" + std::string(parts[2]) + "'");
  }
  auto codec = MakeCodec(parts[0], parts[1], group, op);
  if (!codec.ok()) return InvalidArgument("codec spec '" + std::string(spec) + "': " + codec.status().message());
  return codec;
}

std::string CodecSpecString(const SegmentCodec& codec) {
  std::string s(GetFormatInfo(codec.format).name);
  if (codec.grouping == Grouping::kNone) return s;
  s += ":" + std::string(GroupingName(codec.grouping));
  if ((codec.grouping == Grouping::kPerToken || codec.grouping == Grouping::kPerChannel) && codec.group_size)
    s += ":" + std::to_string(codec.group_size);
  return s;
}

}  // namespace kvtier
