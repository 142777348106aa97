#include "daemon/static_scales_file.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace kvtier {
namespace pb = google::protobuf;

std::string FormatStaticScalesFile(const CalibrationStats& stats, uint64_t layout_id, std::string_view model_name,
                                   const std::vector<std::string>& layer_names) {
  const LayoutShape& s = stats.shape();
  kvtier::v1::StaticScalesFile f;
  f.set_version(kStaticScalesVersion);
  f.set_layout_id(layout_id);
  f.set_model_name(std::string(model_name));
  f.set_num_layers(s.num_layers);
  f.set_num_kv_heads(s.num_kv_heads);
  f.set_head_dim(s.head_dim);
  f.set_dtype("int8");
  f.set_scope("per_channel");
  f.set_method("minmax");
  f.set_symmetric(true);
  f.set_token_count(stats.tokens());
  const std::vector<float> scales = stats.SymmetricInt8Scales();
  for (int l = 0; l < s.num_layers; ++l) {
    auto* layer = f.add_layers();
    layer->set_index(l);
    if (static_cast<int>(layer_names.size()) == s.num_layers) layer->set_name(layer_names[l]);
    for (Operand op : {Operand::kKey, Operand::kValue})
      for (int h = 0; h < s.num_kv_heads; ++h) {
        auto* cs = op == Operand::kKey ? layer->add_key() : layer->add_value();
        for (int c = 0; c < s.head_dim; ++c) {
          const size_t i = stats.Index(l, op, h, c);
          cs->add_scale(scales[i]);
          const bool any = stats.lo()[i] <= stats.hi()[i];
          cs->add_min(any ? stats.lo()[i] : 0.0f);
          cs->add_max(any ? stats.hi()[i] : 0.0f);
        }
      }
  }
  std::string text;
  pb::TextFormat::Printer printer;
  printer.PrintToString(f, &text);
  return absl::StrCat(
      "# kvtier static scales file (kvtier.v1.StaticScalesFile, protobuf text format), docs/calibration.md\n",
      "# per (layer, K|V, kv head, channel): scale = max(|min|, |max|) / 127, symmetric minmax\n", text);
}

std::string FormatStaticScaleSet(const StaticScaleSet& set) {
  kvtier::v1::StaticScalesFile f;
  f.set_version(kStaticScalesVersion);
  f.set_layout_id(set.calibrated_layout_id);
  f.set_model_name(set.model_name);
  f.set_num_layers(set.num_layers);
  f.set_num_kv_heads(set.num_kv_heads);
  f.set_head_dim(set.head_dim);
  f.set_dtype("int8");
  f.set_scope("per_channel");
  f.set_method(set.method);
  f.set_symmetric(set.symmetric);
  f.set_token_count(set.token_count);
  for (int l = 0; l < set.num_layers; ++l) {
    auto* layer = f.add_layers();
    layer->set_index(l);
    if (!set.layer_names.empty()) layer->set_name(set.layer_names[l]);
    for (Operand op : {Operand::kKey, Operand::kValue})
      for (int h = 0; h < set.num_kv_heads; ++h) {
        auto* cs = op == Operand::kKey ? layer->add_key() : layer->add_value();
        for (int c = 0; c < set.head_dim; ++c) cs->add_scale(set.scales[set.Index(l, op, h, c)]);
      }
  }
  std::string text;
  pb::TextFormat::Printer().PrintToString(f, &text);
  return absl::StrCat("# kvtier static scale set ", absl::Hex(set.id, absl::kZeroPad16),
                      " (kvtier.v1.StaticScalesFile, protobuf text format), docs/calibration.md\n", text);
}

absl::Status PersistStaticScaleSet(const std::string& ssd_dir, const StaticScaleSet& set) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(ssd_dir) / "scales";
  const fs::path path = dir / absl::StrCat(absl::Hex(set.id, absl::kZeroPad16), ".kvscales");
  std::error_code ec;
  if (fs::exists(path, ec)) return absl::OkStatus();
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << FormatStaticScaleSet(set);
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
  }
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const StaticScaleSet>> ParseStaticScalesFile(std::string_view text,
                                                                            std::string_view origin) {
  struct Collector : pb::io::ErrorCollector {
    std::string errors;
    void AddError(int line, int col, const std::string& msg) override {
      absl::StrAppend(&errors, "line ", line + 1, ":", col + 1, ": ", msg, "; ");
    }
  } collector;
  kvtier::v1::StaticScalesFile f;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&collector);
  const std::string where = absl::StrCat("scales file ", std::string(origin), ": ");
  if (!parser.ParseFromString(std::string(text), &f))
    return absl::InvalidArgumentError(absl::StrCat(where, "does not parse: ", collector.errors));
  if (f.version() != kStaticScalesVersion)
    return absl::InvalidArgumentError(absl::StrCat(where, "unknown version ", f.version(), " (this kvtierd reads version ",
                                                   kStaticScalesVersion, ")"));
  if (f.dtype() != "int8")
    return absl::InvalidArgumentError(absl::StrCat(where, "dtype '", f.dtype(), "' is not int8"));
  if (!f.scope().empty() && f.scope() != "per_channel")
    return absl::InvalidArgumentError(absl::StrCat(where, "scope '", f.scope(), "' is not per_channel"));
  auto set = std::make_shared<StaticScaleSet>();
  set->calibrated_layout_id = f.layout_id();
  set->model_name = f.model_name();
  set->num_layers = f.num_layers();
  set->num_kv_heads = f.num_kv_heads();
  set->head_dim = f.head_dim();
  set->method = f.method();
  set->symmetric = f.symmetric();
  set->token_count = f.token_count();
  const LayoutShape shape{f.num_layers(), f.num_kv_heads(), f.head_dim(), 16};
  if (const KernelStatus st = ValidateShape(shape); !st.ok())
    return absl::InvalidArgumentError(absl::StrCat(where, st.message()));
  if (f.layers_size() != f.num_layers())
    return absl::InvalidArgumentError(
        absl::StrCat(where, f.layers_size(), " layers listed, num_layers is ", f.num_layers()));
  int named = 0;
  for (const auto& layer : f.layers()) named += !layer.name().empty();
  if (named != 0 && named != f.num_layers())
    return absl::InvalidArgumentError(absl::StrCat(where, "only ", named, " of ", f.num_layers(), " layers are named"));
  set->scales.assign(static_cast<size_t>(f.num_layers()) * 2 * f.num_kv_heads() * f.head_dim(), 0.0f);
  for (int l = 0; l < f.num_layers(); ++l) {
    const auto& layer = f.layers(l);
    if (layer.index() != l)
      return absl::InvalidArgumentError(absl::StrCat(where, "layer entry ", l, " has index ", layer.index()));
    if (named) set->layer_names.push_back(layer.name());
    for (Operand op : {Operand::kKey, Operand::kValue}) {
      const auto& heads = op == Operand::kKey ? layer.key() : layer.value();
      if (heads.size() != f.num_kv_heads())
        return absl::InvalidArgumentError(absl::StrCat(where, "layer ", l, " ", OperandName(op), ": ", heads.size(),
                                                       " heads, num_kv_heads is ", f.num_kv_heads()));
      for (int h = 0; h < f.num_kv_heads(); ++h) {
        const auto& cs = heads[h];
        if (cs.scale_size() != f.head_dim())
          return absl::InvalidArgumentError(absl::StrCat(where, "layer ", l, " ", OperandName(op), " head ", h, ": ",
                                                         cs.scale_size(), " scales, head_dim is ", f.head_dim()));
        if ((cs.min_size() != 0 && cs.min_size() != f.head_dim()) ||
            (cs.max_size() != 0 && cs.max_size() != f.head_dim()))
          return absl::InvalidArgumentError(absl::StrCat(where, "layer ", l, " ", OperandName(op), " head ", h,
                                                         ": min/max need head_dim values or none"));
        for (int c = 0; c < f.head_dim(); ++c) set->scales[set->Index(l, op, h, c)] = cs.scale(c);
      }
    }
  }
  if (absl::Status st = ValidateStaticScaleSet(*set); !st.ok())
    return absl::InvalidArgumentError(absl::StrCat(where, st.message()));
  set->id = StaticScaleSetId(*set);
  return std::shared_ptr<const StaticScaleSet>(std::move(set));
}

absl::StatusOr<StaticScalesPolicy> MakeStaticScalesPolicy(std::shared_ptr<const StaticScaleSet> set,
                                                          const kvtier::v1::StaticScalesPolicy& wire) {
  StaticScalesPolicy p;
  p.set = std::move(set);
  if (!wire.format().empty()) {
    const auto f = ParseFormat(wire.format());
    if (!f || (*f != Format::kInt8 && *f != Format::kFp8E4m3 && *f != Format::kFp8E5m2))
      return absl::InvalidArgumentError(
          absl::StrCat("static_scales.format '", wire.format(), "' is not int8, fp8_e4m3 or fp8_e5m2"));
    p.format = *f;
  }
  if (wire.include_size()) p.include.assign(wire.include().begin(), wire.include().end());
  p.exclude.assign(wire.exclude().begin(), wire.exclude().end());
  for (const auto* list : {&p.include, &p.exclude})
    for (const std::string& s : *list)
      if (s.empty()) return absl::InvalidArgumentError("static_scales: empty layer pattern");
  return p;
}

absl::StatusOr<std::optional<StaticScalesPolicy>> LoadConfiguredStaticScales(const kvtier::v1::DaemonConfig& config) {
  const auto& wire = config.default_policy().static_scales();
  if (wire.file().empty()) {
    if (wire.include_size() || wire.exclude_size() || !wire.format().empty())
      return absl::InvalidArgumentError("default_policy.static_scales sets patterns or a format but no file");
    return std::optional<StaticScalesPolicy>();
  }
  std::ifstream in(wire.file());
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read scales file ", wire.file()));
  std::stringstream ss;
  ss << in.rdbuf();
  auto set = ParseStaticScalesFile(ss.str(), wire.file());
  if (!set.ok()) return set.status();
  auto policy = MakeStaticScalesPolicy(*std::move(set), wire);
  if (!policy.ok()) return policy.status();
  return std::optional<StaticScalesPolicy>(*std::move(policy));
}

}  // namespace kvtier
