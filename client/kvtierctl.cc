// kvtierctl: the operator's command line for a running kvtierd.
//   kvtierctl [--socket=PATH | --target=ADDR] [--token=ADMIN_TOKEN] [--json] COMMAND
// Commands:
//   status                       tiers, hit rate, movement and sessions
//   tiers get                    tier capacities
//   tiers set [--gpu=B] [--host=B]  change capacities at runtime (shrinking drains)
//   evict [--tier=gpu|host] [--max=N]  page unpinned blocks down from a tier (0 = all)
//   sessions                     live sessions: tenant, client, pid, pins
//   lookup --layout=ID --tokens=1,2,3,...  longest cached prefix of a token list and where it lives
//   calibrate start [--layout=ID] [--session=ID]  calibration mode: collect per-channel K/V statistics of
//                                   the KV written (to one layout / by one session; default: all)
//   calibrate stop                  stop collecting (statistics are kept for export)
//   calibrate export FILE [--layout=ID]  write the statistics as a scales file (docs/calibration.md)
//   scales load FILE --layout=ID [--include=P,..] [--exclude=P,..] [--format=int8|fp8_e4m3|fp8_e5m2]
//                                   register a static-scale variant of a layout; prints its layout id
//   flush [--tier=ssd|host]      copy every committed block down (ssd: durable); exit 1 if some did not fit
//   drain --tier=gpu|host [--wait_ms=N]  empty a tier into the ones below without dropping blocks;
//                                exit 1 if blocks remain (pinned or private, or no room below)
//   lookup also prints each block's estimated time to bring it to the GPU
//   policy | events | pin | unpin | invalidate | warm FILE | quota   cache policy (kvtierctl_policy.cc)
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/cli_args.h"
#include "client/client.h"
#include "client/kvtierctl_policy.h"
#include "google/protobuf/util/json_util.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

std::string Human(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, units[u]);
}

const char* TierLabel(v1::Tier t) {
  switch (t) {
    case v1::TIER_GPU: return "gpu";
    case v1::TIER_HOST: return "host";
    case v1::TIER_SSD: return "ssd";
    default: return "?";
  }
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

void PrintStatus(const v1::StatsResponse& s) {
  std::printf("%-6s %12s %12s %8s %10s\n", "tier", "capacity", "used", "used%", "blocks");
  for (const auto& t : s.tiers()) {
    const double pct = t.capacity_bytes() ? 100.0 * t.used_bytes() / t.capacity_bytes() : 0.0;
    std::printf("%-6s %12s %12s %7.1f%% %10llu\n", TierLabel(t.tier()), Human(t.capacity_bytes()).c_str(),
                Human(t.used_bytes()).c_str(), pct, static_cast<unsigned long long>(t.blocks()));
  }
  const double hit = s.lookup_blocks_requested() ? 100.0 * s.lookup_blocks_hit() / s.lookup_blocks_requested() : 0;
  std::printf("\nlookups %llu, prefix hit rate %.1f%% (%llu of %llu full blocks)\n",
              static_cast<unsigned long long>(s.lookups()), hit, static_cast<unsigned long long>(s.lookup_blocks_hit()),
              static_cast<unsigned long long>(s.lookup_blocks_requested()));
  std::printf("committed %llu blocks (%llu deduplicated), pinned %llu\n",
              static_cast<unsigned long long>(s.blocks_committed()),
              static_cast<unsigned long long>(s.blocks_deduplicated()),
              static_cast<unsigned long long>(s.pinned_blocks()));
  std::printf("page-out %llu blocks, page-in %llu blocks, saved by quantization %s\n",
              static_cast<unsigned long long>(s.page_outs()), static_cast<unsigned long long>(s.page_ins()),
              Human(s.bytes_saved_by_quantization()).c_str());
  std::printf("ssd: written %llu, read %llu, restored at start %llu; dropped %llu, checksum failures %llu\n",
              static_cast<unsigned long long>(s.ssd_writes()), static_cast<unsigned long long>(s.ssd_reads()),
              static_cast<unsigned long long>(s.ssd_restored()), static_cast<unsigned long long>(s.blocks_dropped()),
              static_cast<unsigned long long>(s.checksum_failures()));
  std::printf("sessions %llu, layouts %llu\n", static_cast<unsigned long long>(s.sessions()),
              static_cast<unsigned long long>(s.layouts()));
  for (const auto& t : s.tenants())
    for (const auto& u : t.tiers())
      std::printf("tenant %-12s %-5s used %12s quota %12s pinned %12s\n", t.tenant().c_str(), TierLabel(u.tier()),
                  Human(u.used_bytes()).c_str(), u.quota_bytes() ? Human(u.quota_bytes()).c_str() : "-",
                  Human(u.pinned_bytes()).c_str());
  std::printf("static scales: %llu values clipped; calibration %s\n",
              static_cast<unsigned long long>(s.static_scale_clipped()), s.calibrating() ? "running" : "off");
}

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "kvtierctl: %s\n", st.ToString().c_str());
  return 1;
}

int Calibrate(Client& client, const CliArgs& args, bool json) {
  const std::string sub = args.positional.size() > 1 ? args.positional[1] : "";
  const auto layout = static_cast<uint64_t>(args.GetInt("layout", 0));
  if (sub == "start") {
    const auto session = static_cast<uint64_t>(args.GetInt("session", 0));
    if (absl::Status st = client.StartCalibration(layout, session); !st.ok()) return Fail(st);
    std::printf("calibrating %s, %s\n", layout ? absl::StrCat("layout ", layout).c_str() : "every layout",
                session ? absl::StrCat("writes of session ", session).c_str() : "writes of every session");
    return 0;
  }
  if (sub == "stop") {
    auto r = client.StopCalibration();
    if (!r.ok()) return Fail(r.status());
    if (json) {
      std::printf("%s\n", Json(*r).c_str());
      return 0;
    }
    std::printf("calibration stopped; statistics for %d layouts\n", r->layouts_size());
    for (const auto& l : r->layouts())
      std::printf("  layout %llu: %llu tokens\n", static_cast<unsigned long long>(l.layout_id()),
                  static_cast<unsigned long long>(l.token_count()));
    return 0;
  }
  if (sub == "export") {
    if (args.positional.size() < 3) {
      std::fprintf(stderr, "kvtierctl: calibrate export needs a FILE\n");
      return 2;
    }
    const std::string& path = args.positional[2];
    auto r = client.ExportCalibration(layout);
    if (!r.ok()) return Fail(r.status());
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(r->scales_file().data(), 1, r->scales_file().size(), f) != r->scales_file().size() ||
        std::fclose(f) != 0) {
      std::fprintf(stderr, "kvtierctl: cannot write %s\n", path.c_str());
      return 1;
    }
    std::printf("wrote %s: layout %llu, %llu tokens\n", path.c_str(), static_cast<unsigned long long>(r->layout_id()),
                static_cast<unsigned long long>(r->token_count()));
    return 0;
  }
  std::fprintf(stderr, "kvtierctl: calibrate start|stop|export FILE\n");
  return 2;
}

int LoadScales(Client& client, const CliArgs& args, bool json) {
  if (args.positional.size() < 3 || !args.Has("layout")) {
    std::fprintf(stderr, "kvtierctl: scales load FILE --layout=ID [--include=..] [--exclude=..] [--format=..]\n");
    return 2;
  }
  const std::string& path = args.positional[2];
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    std::fprintf(stderr, "kvtierctl: cannot read %s\n", path.c_str());
    return 1;
  }
  std::string text;
  char buf[65536];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  v1::StaticScalesPolicy policy;
  for (absl::string_view p : absl::StrSplit(args.Get("include"), ',', absl::SkipEmpty())) policy.add_include(std::string(p));
  for (absl::string_view p : absl::StrSplit(args.Get("exclude"), ',', absl::SkipEmpty())) policy.add_exclude(std::string(p));
  policy.set_format(args.Get("format"));
  auto r = client.LoadStaticScales(static_cast<uint64_t>(args.GetInt("layout", 0)), std::move(text), policy);
  if (!r.ok()) return Fail(r.status());
  if (json) {
    std::printf("%s\n", Json(*r).c_str());
    return 0;
  }
  std::printf("layout %llu (static scales, scale set %016llx): %d layers quantized with static scales\n",
              static_cast<unsigned long long>(r->layout_id()), static_cast<unsigned long long>(r->scale_set_id()),
              r->static_layers_size());
  for (const auto& u : r->unmatched_patterns()) std::printf("warning: pattern %s matches no layer\n", u.c_str());
  return 0;
}

int Run(const CliArgs& args) {
  if (args.positional.empty() || args.Has("help")) {
    std::printf("usage: kvtierctl [--socket=PATH] [--token=T] [--json] status | tiers get | "
                "tiers set [--gpu=BYTES] [--host=BYTES] [--ssd=BYTES] | evict [--tier=gpu|host] [--max=N] | "
                "sessions | lookup --layout=ID --tokens=T1,T2,... | calibrate start [--layout=ID] [--session=ID] | "
                "calibrate stop | "
                "calibrate export FILE [--layout=ID] | scales load FILE --layout=ID [--include=P,..] [--exclude=P,..] "
                "[--format=F] | flush [--tier=ssd|host] | drain --tier=gpu|host [--wait_ms=N] | "
                "policy | events [--from=SEQ] [--count=N] [--snapshot] "
                "[--of-tenant=T] | pin --layout=ID --tokens=... --ttl-ms=N [--retain] | unpin --pin=ID | "
                "invalidate --layout=ID [--tokens=...] | invalidate --tenant=T | warm FILE [--to=host|gpu] | "
                "quota set --tenant=T [--gpu=B] [--host=B] [--ssd=B] | quota get\n");
    return args.positional.empty() ? 2 : 0;
  }
  ClientOptions o;
  o.client_name = "kvtierctl";
  o.token = args.Get("token");
  o.tenant = args.Get("tenant");
  if (args.Has("socket")) o.target = "unix:" + args.Get("socket");
  if (args.Has("target")) o.target = args.Get("target");
  o.tls_ca_file = args.Get("tls_ca");  // TLS to a TCP target: --tls_ca=PEM [--tls_cert=PEM --tls_key=PEM]
  o.tls_cert_file = args.Get("tls_cert");
  o.tls_key_file = args.Get("tls_key");
  o.tls_server_name = args.Get("tls_name");
  auto client = Client::Connect(o);
  if (!client.ok()) return Fail(client.status());
  const bool json = args.Has("json");
  const std::string& cmd = args.positional[0];
  const std::string sub = args.positional.size() > 1 ? args.positional[1] : "";
  if (cmd == "status" || (cmd == "tiers" && sub == "get")) {
    auto s = (*client)->Stats();
    if (!s.ok()) return Fail(s.status());
    if (json) {
      std::printf("%s\n", Json(*s).c_str());
    } else {
      PrintStatus(*s);
    }
    return 0;
  }
  if (cmd == "tiers" && sub == "set") {
    v1::TierLimits l;
    l.set_gpu_pool_bytes(args.GetInt("gpu", 0));
    l.set_host_tier_bytes(args.GetInt("host", 0));
    l.set_ssd_tier_bytes(args.GetInt("ssd", 0));
    auto r = (*client)->SetTierLimits(l);
    if (!r.ok()) return Fail(r.status());
    std::printf(json ? "%s\n" : "limits now: %s\n", Json(r->limits()).c_str());
    return 0;
  }
  if (cmd == "sessions") {
    auto r = (*client)->ListSessions();
    if (!r.ok()) return Fail(r.status());
    if (json) {
      std::printf("%s\n", Json(*r).c_str());
      return 0;
    }
    std::printf("%-20s %-12s %-20s %8s %6s %6s\n", "session", "tenant", "client", "pid", "admin", "pins");
    for (const auto& s : r->sessions())
      std::printf("%-20llu %-12s %-20s %8lld %6s %6lld\n", static_cast<unsigned long long>(s.session_id()),
                  s.tenant().c_str(), s.client_name().c_str(), static_cast<long long>(s.pid()),
                  s.is_admin() ? "yes" : "no", static_cast<long long>(s.pinned_blocks()));
    return 0;
  }
  if (cmd == "lookup") {
    std::vector<int32_t> tokens;
    for (absl::string_view t : absl::StrSplit(args.Get("tokens"), ',', absl::SkipEmpty())) {
      int32_t v = 0;
      if (!absl::SimpleAtoi(t, &v)) {
        std::fprintf(stderr, "kvtierctl: bad token '%s'\n", std::string(t).c_str());
        return 2;
      }
      tokens.push_back(v);
    }
    auto r = (*client)->Lookup(static_cast<uint64_t>(args.GetInt("layout", 0)), tokens, false, false);
    if (!r.ok()) return Fail(r.status());
    if (json) {
      std::printf("%s\n", Json(*r).c_str());
      return 0;
    }
    std::printf("matched %d of %zu tokens in %d blocks\n", r->matched_tokens(), tokens.size(), r->blocks_size());
    for (const auto& b : r->blocks())
      std::printf("  block %llu tier %s slot %d eta %.1f us\n", static_cast<unsigned long long>(b.block_id()),
                  TierLabel(b.tier()), b.slot(), b.eta_seconds() * 1e6);
    std::printf("whole prefix to the GPU: %.1f us\n", r->eta_seconds() * 1e6);
    return 0;
  }
  if (cmd == "evict") {
    const std::string tier = args.Get("tier", "gpu");
    if (tier != "gpu" && tier != "host") {
      std::fprintf(stderr, "kvtierctl: --tier must be gpu or host\n");
      return 2;
    }
    auto r = (*client)->Evict(tier == "gpu" ? v1::TIER_GPU : v1::TIER_HOST, args.GetInt("max", 0));
    if (!r.ok()) return Fail(r.status());
    if (json) {
      std::printf("%s\n", Json(*r).c_str());
    } else {
      std::printf("paged out %lld blocks from the %s tier, dropped %lld\n", static_cast<long long>(r->blocks_moved()),
                  tier.c_str(), static_cast<long long>(r->blocks_dropped()));
    }
    return 0;
  }
  if (cmd == "calibrate") return Calibrate(**client, args, json);
  if (cmd == "scales" && sub == "load") return LoadScales(**client, args, json);
  if (cmd == "flush") {
    const std::string tier = args.Get("tier", "");
    if (!tier.empty() && tier != "ssd" && tier != "host") {
      std::fprintf(stderr, "kvtierctl: --tier must be ssd or host\n");
      return 2;
    }
    auto r = (*client)->Flush(tier == "ssd"    ? v1::TIER_SSD
                              : tier == "host" ? v1::TIER_HOST
                                               : v1::TIER_UNSPECIFIED);
    if (!r.ok()) return Fail(r.status());
    if (json) {
      std::printf("%s\n", Json(*r).c_str());
    } else {
      std::printf("flushed %lld blocks (%s), %lld already had a copy, %lld not written\n",
                  static_cast<long long>(r->blocks_written()), r->durable() ? "durable on SSD" : "to host memory",
                  static_cast<long long>(r->blocks_already_copied()), static_cast<long long>(r->blocks_not_written()));
    }
    return r->blocks_not_written() == 0 ? 0 : 1;
  }
  if (cmd == "drain") {
    const std::string tier = args.Get("tier", "");
    if (tier != "gpu" && tier != "host") {
      std::fprintf(stderr, "kvtierctl: drain needs --tier=gpu or --tier=host\n");
      return 2;
    }
    auto r = (*client)->Drain(tier == "gpu" ? v1::TIER_GPU : v1::TIER_HOST, args.GetInt("wait_ms", 0));
    if (!r.ok()) return Fail(r.status());
    if (json) {
      std::printf("%s\n", Json(*r).c_str());
    } else {
      std::printf("moved %lld blocks out of the %s tier; %lld remain (%lld pinned, %lld private)\n",
                  static_cast<long long>(r->blocks_moved()), tier.c_str(), static_cast<long long>(r->blocks_remaining()),
                  static_cast<long long>(r->blocks_pinned()), static_cast<long long>(r->blocks_private()));
    }
    return r->drained() ? 0 : 1;
  }
  bool handled = false;
  const int rc = RunPolicyCommand(**client, args, json, &handled);
  if (handled) return rc;
  std::fprintf(stderr, "kvtierctl: unknown command '%s'\n", cmd.c_str());
  return 2;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) { return kvtier::Run(kvtier::CliArgs::Parse(argc, argv)); }
