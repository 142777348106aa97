// The cache_policy section of the daemon config (docs/cache_policy.md): validation, translation into the
// BlockStore's CachePolicyOptions, and the tenants' configured quotas.
#pragma once

#include "absl/status/status.h"
#include "kvtier/v1/config.pb.h"
#include "tiering/block_store.h"

namespace kvtier {

// Unknown eviction policy names, negative sizes, quotas or TTLs, and an SSD quota without an SSD tier
// are errors naming the field.
absl::Status ValidateCachePolicyConfig(const kvtier::v1::DaemonConfig& config);

CachePolicyOptions CachePolicyOptionsFromConfig(const kvtier::v1::DaemonConfig& config);

// Sets every configured tenant's quota in the store (tenant namespace: the hash of its salt).
absl::Status ApplyConfiguredQuotas(const kvtier::v1::DaemonConfig& config, BlockStore& store);

}  // namespace kvtier
