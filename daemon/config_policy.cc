#include "daemon/config_policy.h"

#include "absl/strings/str_cat.h"
#include "tiering/eviction_policy.h"

namespace kvtier {

absl::Status ValidateCachePolicyConfig(const kvtier::v1::DaemonConfig& c) {
  const auto& p = c.cache_policy();
  const std::pair<const char*, const kvtier::v1::TierPolicyConfig*> tiers[] = {
      {"gpu", &p.gpu()}, {"host", &p.host()}, {"ssd", &p.ssd()}};
  for (const auto& [name, t] : tiers) {
    if (auto made = MakeEvictionPolicy(t->eviction()); !made.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("config: cache_policy.", name, ".eviction: ", made.status().message()));
    if (t->admission_min_uses() < 0)
      return absl::InvalidArgumentError(absl::StrCat("config: cache_policy.", name, ".admission_min_uses is negative"));
  }
  if (p.gpu().admission_min_uses() != 0)
    return absl::InvalidArgumentError("config: cache_policy.gpu.admission_min_uses: admission applies to host and ssd");
  if (p.event_buffer() < 0 || p.event_buffer() > (64 << 20))
    return absl::InvalidArgumentError("config: cache_policy.event_buffer outside [0, 67108864]");
  if (p.host_to_gpu_bytes_per_second() < 0 || p.ssd_read_bytes_per_second() < 0)
    return absl::InvalidArgumentError("config: cache_policy bandwidths must be >= 0");
  if (p.max_pin_ttl_ms() < 0) return absl::InvalidArgumentError("config: cache_policy.max_pin_ttl_ms is negative");
  if (!p.kv_events_zmq_endpoint().empty() && p.kv_events_zmq_endpoint().find("://") == std::string::npos)
    return absl::InvalidArgumentError("config: cache_policy.kv_events_zmq_endpoint must look like tcp://*:5557");
  for (const auto& t : c.tenants()) {
    const auto& q = t.quota();
    if (q.gpu_bytes() < 0 || q.host_bytes() < 0 || q.ssd_bytes() < 0)
      return absl::InvalidArgumentError(absl::StrCat("config: tenant '", t.name(), "': quota bytes are negative"));
    if (q.ssd_bytes() > 0 && (c.ssd_dir().empty() || c.limits().ssd_tier_bytes() == 0))
      return absl::InvalidArgumentError(absl::StrCat("config: tenant '", t.name(), "': an SSD quota needs an SSD tier"));
  }
  return absl::OkStatus();
}

CachePolicyOptions CachePolicyOptionsFromConfig(const kvtier::v1::DaemonConfig& c) {
  const auto& p = c.cache_policy();
  CachePolicyOptions o;
  auto tier = [](const kvtier::v1::TierPolicyConfig& t, TierPolicyOptions* out) {
    if (!t.eviction().empty()) out->eviction = t.eviction();
    out->admission_min_uses = t.admission_min_uses();
  };
  tier(p.gpu(), &o.gpu);
  tier(p.host(), &o.host);
  tier(p.ssd(), &o.ssd);
  if (p.event_buffer() > 0) o.event_buffer = static_cast<size_t>(p.event_buffer());
  if (p.host_to_gpu_bytes_per_second() > 0) o.host_to_gpu_bytes_per_second = p.host_to_gpu_bytes_per_second();
  if (p.ssd_read_bytes_per_second() > 0) o.ssd_read_bytes_per_second = p.ssd_read_bytes_per_second();
  if (p.max_pin_ttl_ms() > 0) o.max_pin_ttl_ms = p.max_pin_ttl_ms();
  return o;
}

absl::Status ApplyConfiguredQuotas(const kvtier::v1::DaemonConfig& c, BlockStore& store) {
  for (const auto& t : c.tenants()) {
    if (!t.has_quota()) continue;
    const auto& q = t.quota();
    const TenantQuota quota{static_cast<uint64_t>(q.gpu_bytes()), static_cast<uint64_t>(q.host_bytes()),
                            static_cast<uint64_t>(q.ssd_bytes())};
    if (auto st = store.SetTenantQuota(BlockStore::TenantNs(t.salt().empty() ? t.name() : t.salt()), quota); !st.ok())
      return absl::InvalidArgumentError(absl::StrCat("tenant '", t.name(), "' quota: ", st.message()));
  }
  return absl::OkStatus();
}

}  // namespace kvtier
