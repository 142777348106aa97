// Prometheus families of the cache-policy layer (docs/operations.md lists them; docs/cache_policy.md
// says what they mean).
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/metrics.h"

namespace kvtier {
namespace {

void Family(std::string* out, absl::string_view name, absl::string_view type, absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

// Label values are tenant names and consumer names: escape what the exposition format requires.
std::string Escape(absl::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

constexpr Tier kTiers[] = {Tier::kGpu, Tier::kHost, Tier::kSsd};

}  // namespace

void TakePolicySample(const BlockStore& store, const SessionRegistry& sessions, MetricsSample* sample) {
  sample->policy = store.GetPolicyStats();
  sample->event_consumers = store.events().Consumers();
  for (const Session& s : sessions.List()) sample->tenant_names[BlockStore::TenantNs(s.salt)] = s.tenant;
}

void AppendPolicyMetrics(const MetricsSample& sample, std::string* out) {
  const PolicyStats& p = sample.policy;
  const bool ssd = sample.store.tiers.size() > 2;
  auto per_tier = [&](absl::string_view name, absl::string_view type, absl::string_view help,
                      const std::array<uint64_t, 4>& v, bool host_and_ssd_only) {
    Family(out, name, type, help);
    for (Tier t : kTiers) {
      if ((t == Tier::kSsd && !ssd) || (host_and_ssd_only && t == Tier::kGpu)) continue;
      absl::StrAppend(out, name, "{tier=\"", TierName(t), "\"} ", v[static_cast<int>(t)], "\n");
    }
  };
  per_tier("kvtier_lookup_hits_total", "counter",
           "Looked-up blocks found, by the tier they were in (denominator: kvtier_lookup_blocks_requested_total).",
           p.lookup_hits_by_tier, false);
  per_tier("kvtier_admission_rejections_total", "counter",
           "Blocks the admission filter kept out of a tier (dropped instead of written there).",
           p.admission_rejections, true);
  per_tier("kvtier_quota_evictions_total", "counter",
           "Blocks moved out of a tier to keep their tenant inside its quota there.", p.quota_evictions, false);
  Family(out, "kvtier_blocks_removed_total", "counter", "Blocks removed from the cache, by reason.");
  for (int r = 1; r < kNumRemoveReasons; ++r)
    absl::StrAppend(out, "kvtier_blocks_removed_total{reason=\"", RemoveReasonName(static_cast<RemoveReason>(r)), "\"} ",
                    p.removed_by_reason[r], "\n");
  Family(out, "kvtier_eviction_policy_info", "gauge", "The eviction policy of each tier (value 1).");
  for (Tier t : kTiers) {
    if (t == Tier::kSsd && !ssd) continue;
    absl::StrAppend(out, "kvtier_eviction_policy_info{tier=\"", TierName(t), "\",policy=\"",
                    p.eviction_policy[static_cast<int>(t)], "\"} 1\n");
  }
  Family(out, "kvtier_pins", "gauge", "Retention pins and hints in force (PinPrefix).");
  absl::StrAppend(out, "kvtier_pins ", p.pins_active, "\n");
  Family(out, "kvtier_pinned_blocks_by_pins", "gauge", "Blocks held by retention pins and hints.");
  absl::StrAppend(out, "kvtier_pinned_blocks_by_pins ", p.pinned_blocks_by_pins, "\n");
  Family(out, "kvtier_pins_created_total", "counter", "Retention pins and hints created.");
  absl::StrAppend(out, "kvtier_pins_created_total ", p.pins_created, "\n");
  Family(out, "kvtier_pins_expired_total", "counter", "Retention pins and hints that ended at their TTL.");
  absl::StrAppend(out, "kvtier_pins_expired_total ", p.pins_expired, "\n");
  Family(out, "kvtier_blocks_warmed_total", "counter", "Blocks brought up by warm-up requests.");
  absl::StrAppend(out, "kvtier_blocks_warmed_total ", p.warmed_blocks, "\n");
  Family(out, "kvtier_transfer_bytes_per_second", "gauge",
         "Transfer bandwidth used for lookup time-to-GPU estimates (configured prior, refined by measurement).");
  absl::StrAppend(out, "kvtier_transfer_bytes_per_second{path=\"host_to_gpu\"} ",
                  absl::StrFormat("%.9g", p.host_to_gpu_bytes_per_second), "\n");
  absl::StrAppend(out, "kvtier_transfer_bytes_per_second{path=\"ssd_read\"} ",
                  absl::StrFormat("%.9g", p.ssd_read_bytes_per_second), "\n");
  Family(out, "kvtier_events_total", "counter", "KV events emitted (stored, moved, removed).");
  absl::StrAppend(out, "kvtier_events_total ", p.event_next_seq - 1, "\n");
  Family(out, "kvtier_event_consumers", "gauge", "Event consumers attached (gRPC streams, ZeroMQ publisher).");
  absl::StrAppend(out, "kvtier_event_consumers ", sample.event_consumers.size(), "\n");
  uint64_t max_lag = 0, lost = 0;
  for (const auto& c : sample.event_consumers) {
    max_lag = std::max(max_lag, c.lag);
    lost += c.lost;
  }
  Family(out, "kvtier_event_stream_lag_events", "gauge", "Events appended but not yet read by the slowest consumer.");
  absl::StrAppend(out, "kvtier_event_stream_lag_events ", max_lag, "\n");
  Family(out, "kvtier_event_stream_lost_total", "counter",
         "Events consumers missed because they fell behind the event buffer (gaps, summed over live consumers).");
  absl::StrAppend(out, "kvtier_event_stream_lost_total ", lost, "\n");
  Family(out, "kvtier_tenant_used_bytes", "gauge", "Bytes a tenant holds in a tier.");
  for (const TenantUsage& u : p.tenants) {
    auto it = sample.tenant_names.find(u.tenant_ns);
    const std::string name =
        Escape(it != sample.tenant_names.end() ? it->second : absl::StrFormat("ns:%016x", u.tenant_ns));
    for (Tier t : kTiers) {
      if (t == Tier::kSsd && !ssd) continue;
      absl::StrAppend(out, "kvtier_tenant_used_bytes{tenant=\"", name, "\",tier=\"", TierName(t), "\"} ",
                      u.used_bytes[static_cast<int>(t)], "\n");
    }
  }
  Family(out, "kvtier_tenant_quota_bytes", "gauge", "A tenant's byte quota in a tier (tenants with one only).");
  for (const TenantUsage& u : p.tenants) {
    auto it = sample.tenant_names.find(u.tenant_ns);
    const std::string name =
        Escape(it != sample.tenant_names.end() ? it->second : absl::StrFormat("ns:%016x", u.tenant_ns));
    for (Tier t : kTiers)
      if (u.quota_bytes[static_cast<int>(t)] != 0)
        absl::StrAppend(out, "kvtier_tenant_quota_bytes{tenant=\"", name, "\",tier=\"", TierName(t), "\"} ",
                        u.quota_bytes[static_cast<int>(t)], "\n");
  }
}

}  // namespace kvtier
