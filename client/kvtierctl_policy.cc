// kvtierctl's cache-policy commands (docs/cache_policy.md):
//   policy                                   hit rate per tier, removals by reason, admission, pins,
//                                            quotas, event consumers
//   events [--from=SEQ] [--count=N] [--snapshot] [--of-tenant=T]   follow the KV event stream
//   pin --layout=ID --tokens=... --ttl-ms=N [--retain]            pin a prefix (or a retention hint)
//   unpin --pin=ID
//   invalidate --layout=ID [--tokens=...] | invalidate --tenant=T  remove blocks from every tier
//   warm FILE [--to=host|gpu]            pre-load the prefixes listed in FILE ("LAYOUT: t1,t2,...")
//   quota set --tenant=T [--gpu=B] [--host=B] [--ssd=B]           a tenant's byte quota per tier
#include "client/kvtierctl_policy.h"

#include <grpcpp/client_context.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/json_util.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

int Fail(const grpc::Status& st) {
  std::fprintf(stderr, "kvtierctl: %d: %s\n", static_cast<int>(st.error_code()), st.error_message().c_str());
  return 1;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

const char* TierLabel(v1::Tier t) {
  switch (t) {
    case v1::TIER_GPU: return "gpu";
    case v1::TIER_HOST: return "host";
    case v1::TIER_SSD: return "ssd";
    default: return "-";
  }
}

std::string Hex(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) absl::StrAppendFormat(&out, "%02x", c);
  return out;
}

bool ParseTokens(absl::string_view text, std::vector<int32_t>* out, std::string* error) {
  for (absl::string_view t : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(t), &v)) {
      *error = absl::StrCat("bad token '", t, "'");
      return false;
    }
    out->push_back(v);
  }
  if (out->empty()) {
    *error = "no tokens";
    return false;
  }
  return true;
}

void PrintEvent(const v1::KvEvent& e) {
  const char* type = e.type() == v1::KV_EVENT_STORED ? "stored" : e.type() == v1::KV_EVENT_MOVED ? "moved" : "removed";
  std::string where = TierLabel(e.tier());
  if (e.type() == v1::KV_EVENT_MOVED) where = absl::StrCat(TierLabel(e.from_tier()), "->", TierLabel(e.tier()));
  std::string extra;
  if (e.type() == v1::KV_EVENT_REMOVED) extra = absl::StrCat(" reason=", v1::RemoveReason_Name(e.reason()));
  std::printf("%llu %-7s key=%s parent=%s tenant=%s layout=%llu tier=%s format=%s%s\n",
              static_cast<unsigned long long>(e.seq()), type, Hex(e.key()).c_str(),
              e.parent_key().empty() ? "-" : Hex(e.parent_key()).c_str(), e.tenant().c_str(),
              static_cast<unsigned long long>(e.layout_id()), where.c_str(), e.format().c_str(), extra.c_str());
}

int Policy(Client& c, bool json) {
  grpc::ClientContext ctx;
  v1::PolicyStatsRequest req;
  req.set_session_id(c.session_id());
  v1::PolicyStatsResponse r;
  if (auto st = c.stub().PolicyStats(&ctx, req, &r); !st.ok()) return Fail(st);
  if (json) {
    std::printf("%s\n", Json(r).c_str());
    return 0;
  }
  const double n = static_cast<double>(r.lookup_blocks_requested());
  std::printf("%-5s %-6s %12s %8s %12s %12s\n", "tier", "policy", "lookup hits", "hit%", "admission-", "quota-evict");
  uint64_t total = 0;
  for (const auto& t : r.tiers()) {
    total += t.lookup_hits();
    std::printf("%-5s %-6s %12llu %7.1f%% %12llu %12llu\n", TierLabel(t.tier()), t.eviction_policy().c_str(),
                static_cast<unsigned long long>(t.lookup_hits()), n > 0 ? 100.0 * t.lookup_hits() / n : 0.0,
                static_cast<unsigned long long>(t.admission_rejections()),
                static_cast<unsigned long long>(t.quota_evictions()));
  }
  std::printf("all   %19llu %7.1f%%  of %llu looked-up blocks\n", static_cast<unsigned long long>(total),
              n > 0 ? 100.0 * total / n : 0.0, static_cast<unsigned long long>(r.lookup_blocks_requested()));
  std::printf("\nremoved:");
  for (const auto& [reason, count] : r.removed_by_reason())
    std::printf(" %s=%llu", reason.c_str(), static_cast<unsigned long long>(count));
  std::printf("\npins %llu active (%llu blocks; %llu created, %llu expired), retention-hinted blocks %llu\n",
              static_cast<unsigned long long>(r.pins_active()), static_cast<unsigned long long>(r.pinned_blocks()),
              static_cast<unsigned long long>(r.pins_created()), static_cast<unsigned long long>(r.pins_expired()),
              static_cast<unsigned long long>(r.retention_hint_blocks()));
  std::printf("bandwidth host->gpu %.2f GB/s, ssd read %.2f GB/s; invalidated %llu, warmed %llu\n",
              r.host_to_gpu_bytes_per_second() / 1e9, r.ssd_read_bytes_per_second() / 1e9,
              static_cast<unsigned long long>(r.blocks_invalidated()), static_cast<unsigned long long>(r.blocks_warmed()));
  std::printf("events: next seq %llu\n", static_cast<unsigned long long>(r.event_next_seq()));
  for (const auto& e : r.event_consumers())
    std::printf("  consumer %-30s lag %llu lost %llu\n", e.name().c_str(), static_cast<unsigned long long>(e.lag()),
                static_cast<unsigned long long>(e.lost()));
  if (r.tenants_size() > 0) std::printf("\n%-16s %-5s %14s %14s %14s\n", "tenant", "tier", "used", "quota", "pinned");
  for (const auto& t : r.tenants())
    for (const auto& u : t.tiers())
      std::printf("%-16s %-5s %14llu %14s %14llu\n", t.tenant().c_str(), TierLabel(u.tier()),
                  static_cast<unsigned long long>(u.used_bytes()),
                  u.quota_bytes() ? absl::StrCat(u.quota_bytes()).c_str() : "-",
                  static_cast<unsigned long long>(u.pinned_bytes()));
  return 0;
}

int Events(Client& c, const CliArgs& args, bool json) {
  uint64_t from = static_cast<uint64_t>(args.GetInt("from", 0));
  if (args.Has("snapshot")) {
    grpc::ClientContext ctx;
    v1::KvSnapshotRequest req;
    req.set_session_id(c.session_id());
    req.set_tenant(args.Get("of-tenant"));
    v1::KvSnapshotResponse r;
    if (auto st = c.stub().KvSnapshot(&ctx, req, &r); !st.ok()) return Fail(st);
    if (json) {
      std::printf("%s\n", Json(r).c_str());
    } else {
      std::printf("snapshot: %d blocks, events from seq %llu\n", r.blocks_size(),
                  static_cast<unsigned long long>(r.next_seq()));
      for (const auto& b : r.blocks())
        std::printf("  key=%s tenant=%s layout=%llu tier=%s format=%s\n", Hex(b.key()).c_str(), b.tenant().c_str(),
                    static_cast<unsigned long long>(b.layout_id()), TierLabel(b.tier()), b.format().c_str());
    }
    from = r.next_seq();
  }
  const int64_t count = args.GetInt("count", 0);  // 0: until interrupted
  grpc::ClientContext ctx;
  v1::StreamKvEventsRequest req;
  req.set_session_id(c.session_id());
  req.set_start_seq(from);
  req.set_tenant(args.Get("of-tenant"));
  auto reader = c.stub().StreamKvEvents(&ctx, req);
  v1::KvEventBatch batch;
  int64_t seen = 0;
  uint64_t expect = from;
  while (reader->Read(&batch)) {
    if (batch.lost() > 0 || (expect != 0 && batch.from_seq() != expect))
      std::fprintf(stderr, "kvtierctl: gap: %llu events lost before seq %llu; resync with --snapshot\n",
                   static_cast<unsigned long long>(batch.lost()), static_cast<unsigned long long>(batch.from_seq()));
    expect = batch.next_seq();
    for (const auto& e : batch.events()) {
      if (json) {
        std::printf("%s\n", Json(e).c_str());
      } else {
        PrintEvent(e);
      }
      if (count > 0 && ++seen >= count) {
        ctx.TryCancel();
        (void)reader->Finish();
        return 0;
      }
    }
    std::fflush(stdout);
  }
  const grpc::Status st = reader->Finish();
  return st.ok() ? 0 : Fail(st);
}

int Pin(Client& c, const CliArgs& args, bool json) {
  v1::PinPrefixRequest req;
  req.set_session_id(c.session_id());
  req.set_layout_id(static_cast<uint64_t>(args.GetInt("layout", 0)));
  std::vector<int32_t> tokens;
  std::string error;
  if (!ParseTokens(args.Get("tokens"), &tokens, &error)) {
    std::fprintf(stderr, "kvtierctl: --tokens: %s\n", error.c_str());
    return 2;
  }
  for (int32_t t : tokens) req.add_tokens(t);
  req.set_ttl_ms(args.GetInt("ttl-ms", 0));
  req.set_mode(args.Has("retain") ? v1::PIN_MODE_RETAIN : v1::PIN_MODE_HARD);
  grpc::ClientContext ctx;
  v1::PinPrefixResponse r;
  if (auto st = c.stub().PinPrefix(&ctx, req, &r); !st.ok()) return Fail(st);
  if (json) {
    std::printf("%s\n", Json(r).c_str());
  } else {
    std::printf("pin %llu: %lld blocks until %lld (unix ms)\n", static_cast<unsigned long long>(r.pin_id()),
                static_cast<long long>(r.blocks()), static_cast<long long>(r.expires_unix_ms()));
  }
  return 0;
}

int Unpin(Client& c, const CliArgs& args) {
  v1::ReleasePinRequest req;
  req.set_session_id(c.session_id());
  req.set_pin_id(static_cast<uint64_t>(args.GetInt("pin", 0)));
  grpc::ClientContext ctx;
  v1::ReleasePinResponse r;
  if (auto st = c.stub().ReleasePin(&ctx, req, &r); !st.ok()) return Fail(st);
  std::printf("pin %llu released\n", static_cast<unsigned long long>(req.pin_id()));
  return 0;
}

int Invalidate(Client& c, const CliArgs& args, bool json) {
  v1::InvalidateRequest req;
  req.set_session_id(c.session_id());
  if (args.Has("tokens")) {
    std::vector<int32_t> tokens;
    std::string error;
    if (!ParseTokens(args.Get("tokens"), &tokens, &error)) {
      std::fprintf(stderr, "kvtierctl: --tokens: %s\n", error.c_str());
      return 2;
    }
    req.mutable_prefix()->set_layout_id(static_cast<uint64_t>(args.GetInt("layout", 0)));
    for (int32_t t : tokens) req.mutable_prefix()->add_tokens(t);
  } else if (args.Has("layout")) {
    req.set_layout_id(static_cast<uint64_t>(args.GetInt("layout", 0)));
  } else if (args.Has("tenant")) {
    req.set_tenant(args.Get("tenant"));
  } else {
    std::fprintf(stderr, "kvtierctl: invalidate needs --layout=ID [--tokens=...] or --tenant=T\n");
    return 2;
  }
  grpc::ClientContext ctx;
  v1::InvalidateResponse r;
  if (auto st = c.stub().Invalidate(&ctx, req, &r); !st.ok()) return Fail(st);
  if (json) {
    std::printf("%s\n", Json(r).c_str());
  } else {
    std::printf("removed %lld blocks from every tier; %lld pinned by live sessions left in place\n",
                static_cast<long long>(r.blocks_removed()), static_cast<long long>(r.blocks_skipped_pinned()));
  }
  return 0;
}

int Quota(Client& c, const CliArgs& args, bool json) {
  const std::string sub = args.positional.size() > 1 ? args.positional[1] : "";
  if (sub == "get") return Policy(c, json);
  if (sub != "set" || args.Get("tenant").empty()) {
    std::fprintf(stderr, "kvtierctl: quota set --tenant=T [--gpu=BYTES] [--host=BYTES] [--ssd=BYTES] | quota get\n");
    return 2;
  }
  v1::SetTenantQuotaRequest req;
  req.set_session_id(c.session_id());
  req.set_tenant(args.Get("tenant"));
  req.mutable_quota()->set_gpu_bytes(args.GetInt("gpu", 0));
  req.mutable_quota()->set_host_bytes(args.GetInt("host", 0));
  req.mutable_quota()->set_ssd_bytes(args.GetInt("ssd", 0));
  grpc::ClientContext ctx;
  v1::SetTenantQuotaResponse r;
  if (auto st = c.stub().SetTenantQuota(&ctx, req, &r); !st.ok()) return Fail(st);
  std::printf(json ? "%s\n" : "quota now: %s\n", Json(r.quota()).c_str());
  return 0;
}

int Warm(Client& c, const CliArgs& args, bool json) {
  if (args.positional.size() < 2) {
    std::fprintf(stderr, "kvtierctl: warm FILE [--to=host|gpu]\n");
    return 2;
  }
  auto file = ParseWarmFile(args.positional[1]);
  if (!file.ok()) {
    std::fprintf(stderr, "kvtierctl: %s\n", std::string(file.status().message()).c_str());
    return 2;
  }
  const std::string target = args.Get("to", "host");
  if (target != "host" && target != "gpu") {
    std::fprintf(stderr, "kvtierctl: --to must be host or gpu\n");
    return 2;
  }
  v1::WarmRequest req = std::move(*file);
  req.set_session_id(c.session_id());
  req.set_target(target == "gpu" ? v1::TIER_GPU : v1::TIER_HOST);
  grpc::ClientContext ctx;
  auto reader = c.stub().Warm(&ctx, req);
  v1::WarmProgress p;
  while (reader->Read(&p)) {
    if (json) {
      std::printf("%s\n", Json(p).c_str());
    } else {
      std::printf("[%d/%d] blocks found %lld, in %s %lld\n", p.prefixes_done(), p.prefixes_total(),
                  static_cast<long long>(p.blocks_found()), target.c_str(), static_cast<long long>(p.blocks_in_target()));
    }
    std::fflush(stdout);
  }
  const grpc::Status st = reader->Finish();
  return st.ok() ? 0 : Fail(st);
}

}  // namespace

absl::StatusOr<v1::WarmRequest> ParseWarmFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read warm file ", path));
  v1::WarmRequest req;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l[0] == '#') continue;
    const size_t colon = l.find(':');
    uint64_t layout = 0;
    if (colon == absl::string_view::npos ||
        !absl::SimpleAtoi(absl::StripAsciiWhitespace(l.substr(0, colon)), &layout) || layout == 0)
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": expected 'LAYOUT_ID: token,token,...', got '", l, "'"));
    std::vector<int32_t> tokens;
    std::string error;
    if (!ParseTokens(l.substr(colon + 1), &tokens, &error))
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": ", error));
    auto* p = req.add_prefixes();
    p->set_layout_id(layout);
    for (int32_t t : tokens) p->add_tokens(t);
  }
  if (req.prefixes_size() == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": no prefixes"));
  return req;
}

int RunPolicyCommand(Client& client, const CliArgs& args, bool json, bool* handled) {
  *handled = true;
  const std::string& cmd = args.positional[0];
  if (cmd == "policy") return Policy(client, json);
  if (cmd == "events") return Events(client, args, json);
  if (cmd == "pin") return Pin(client, args, json);
  if (cmd == "unpin") return Unpin(client, args);
  if (cmd == "invalidate") return Invalidate(client, args, json);
  if (cmd == "warm") return Warm(client, args, json);
  if (cmd == "quota") return Quota(client, args, json);
  *handled = false;
  return 0;
}

}  // namespace kvtier
