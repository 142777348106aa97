#include "daemon/config.h"
#include "daemon/config_policy.h"

#include "daemon/fault_spec.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"

namespace kvtier {

namespace pb = google::protobuf;
using kvtier::v1::DaemonConfig;

std::string DefaultSocketPath() {
  if (geteuid() == 0) return "/run/kvtier/kvtierd.sock";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0')
    return absl::StrCat(xdg, "/kvtier/kvtierd.sock");
  return absl::StrCat("/tmp/kvtier-", geteuid(), "/kvtierd.sock");
}

DaemonConfig DefaultConfig() {
  DaemonConfig c;
  c.set_socket_path(DefaultSocketPath());
  c.mutable_limits()->set_gpu_pool_bytes(1ull << 30);
  c.mutable_limits()->set_host_tier_bytes(4ull << 30);
  c.mutable_limits()->set_ssd_tier_bytes(0);
  c.set_lease_ms(10000);
  c.set_mover_threads(std::max(1u, std::thread::hardware_concurrency() / 2));
  c.set_max_message_bytes(64ll << 20);
  auto* p = c.mutable_default_policy();
  p->mutable_resident_key()->set_format("fp16");
  p->mutable_resident_value()->set_format("fp16");
  p->mutable_offload_key()->set_format("int8");
  p->mutable_offload_value()->set_format("int8");
  return c;
}

absl::StatusOr<DaemonConfig> LoadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  DaemonConfig file;
  if (absl::EndsWith(path, ".json")) {
    const auto st = pb::util::JsonStringToMessage(ss.str(), &file);
    if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.ToString()));
  } else {
    struct Collector : pb::io::ErrorCollector {
      std::string errors;
      void AddError(int line, int col, const std::string& msg) override {
        absl::StrAppend(&errors, "line ", line + 1, ":", col + 1, ": ", msg, "; ");
      }
    } collector;
    pb::TextFormat::Parser parser;
    parser.RecordErrorsTo(&collector);
    if (!parser.ParseFromString(ss.str(), &file))
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", collector.errors));
  }
  DaemonConfig merged = DefaultConfig();
  // Repeated fields and sub-messages given in the file replace the defaults rather than append.
  if (file.has_default_policy()) merged.clear_default_policy();
  merged.MergeFrom(file);
  return merged;
}

absl::Status ApplyFlags(const std::vector<std::string>& flags, DaemonConfig* config) {
  for (const std::string& flag : flags) {
    if (!absl::StartsWith(flag, "--") || flag.find('=') == std::string::npos)
      return absl::InvalidArgumentError(absl::StrCat("unrecognized argument '", flag, "' (expected --field=value)"));
    const std::pair<std::string, std::string> kv = absl::StrSplit(flag.substr(2), absl::MaxSplits('=', 1));
    // A flag is a text-format assignment of one (possibly nested) field: a.b=v -> a { b: v }.
    std::vector<std::string> path = absl::StrSplit(kv.first, '.');
    std::string text;
    for (size_t i = 0; i + 1 < path.size(); ++i) absl::StrAppend(&text, path[i], " { ");
    const pb::FieldDescriptor* leaf = nullptr;
    const pb::Descriptor* d = config->GetDescriptor();
    for (size_t i = 0; i < path.size() && d != nullptr; ++i) {
      leaf = d->FindFieldByName(path[i]);
      if (leaf == nullptr) break;
      d = leaf->message_type();
    }
    if (leaf == nullptr || leaf->message_type() != nullptr || leaf->is_repeated())
      return absl::InvalidArgumentError(absl::StrCat("unknown or non-scalar config field '", kv.first, "'"));
    const bool quote = leaf->type() == pb::FieldDescriptor::TYPE_STRING;
    absl::StrAppend(&text, path.back(), ": ", quote ? "\"" : "", kv.second, quote ? "\"" : "");
    for (size_t i = 0; i + 1 < path.size(); ++i) absl::StrAppend(&text, " }");
    DaemonConfig patch;
    if (!pb::TextFormat::ParseFromString(text, &patch))
      return absl::InvalidArgumentError(absl::StrCat("bad value for --", kv.first, ": '", kv.second, "'"));
    config->MergeFrom(patch);
  }
  return absl::OkStatus();
}

absl::Status ValidateConfig(const DaemonConfig& c) {
  if (c.socket_path().empty() && c.tcp_address().empty())
    return absl::InvalidArgumentError("config: neither socket_path nor tcp_address is set");
  if (c.socket_path().size() >= 108) return absl::InvalidArgumentError("config: socket_path longer than 107 bytes");
  if (c.limits().gpu_pool_bytes() < (1u << 20))
    return absl::InvalidArgumentError("config: limits.gpu_pool_bytes must be at least 1 MiB");
  if (c.lease_ms() < 100 || c.lease_ms() > 3600000)
    return absl::InvalidArgumentError("config: lease_ms outside [100, 3600000]");
  if (c.mover_threads() < 1 || c.mover_threads() > 256)
    return absl::InvalidArgumentError("config: mover_threads outside [1, 256]");
  if (c.max_message_bytes() < (1 << 20) || c.max_message_bytes() > (1ll << 31) - 1)
    return absl::InvalidArgumentError("config: max_message_bytes outside [1 MiB, 2 GiB)");
  if (c.limits().ssd_tier_bytes() > 0 && c.ssd_dir().empty())
    return absl::InvalidArgumentError("config: limits.ssd_tier_bytes is set but ssd_dir is empty");
  if (!c.ssd_dir().empty() && c.limits().ssd_tier_bytes() > 0 && c.limits().ssd_tier_bytes() < (16u << 20))
    return absl::InvalidArgumentError("config: limits.ssd_tier_bytes must be at least 16 MiB");
  if (c.ssd_min_free_fraction() < 0 || c.ssd_min_free_fraction() > 0.9)
    return absl::InvalidArgumentError("config: ssd_min_free_fraction outside [0, 0.9]");
  if (!c.ssd_durability().empty() && c.ssd_durability() != "process_crash" && c.ssd_durability() != "power_loss")
    return absl::InvalidArgumentError(
        absl::StrCat("config: ssd_durability \"", c.ssd_durability(), "\" is neither process_crash nor power_loss"));
  if (c.ssd_io_timeout_ms() < 0 || c.ssd_io_timeout_ms() > 600000)
    return absl::InvalidArgumentError("config: ssd_io_timeout_ms outside [0, 600000]");
  if (auto plan = ParseFaultSpec(c.fault_spec()); !plan.ok())
    return absl::InvalidArgumentError(absl::StrCat("config: ", plan.status().message()));
  for (const auto& t : c.tenants())
    if (t.name().empty()) return absl::InvalidArgumentError("config: a tenant has no name");
  if (c.tls_cert_file().empty() != c.tls_key_file().empty())
    return absl::InvalidArgumentError("config: tls_cert_file and tls_key_file go together");
  if (!c.tls_client_ca_file().empty() && c.tls_cert_file().empty())
    return absl::InvalidArgumentError("config: tls_client_ca_file needs tls_cert_file and tls_key_file");
  if (!c.tls_cert_file().empty() && c.tcp_address().empty())
    return absl::InvalidArgumentError("config: TLS is for the TCP listener, but tcp_address is empty");
  if (auto st = ValidateCachePolicyConfig(c); !st.ok()) return st;
  return absl::OkStatus();
}

}  // namespace kvtier
