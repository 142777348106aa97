// RunSsdAudit (stress_roles.h): after kill -9, the SSD tier as the next daemon will find it.
#include <cstdio>

#include "tests/reliability/stress_roles.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier::stress {

int RunSsdAudit(const Options& o, Shared* shared) {
  SsdTierOptions so;
  so.dir = o.dir + "/ssd";
  so.capacity_bytes = o.ssd_bytes;
  so.slab_bytes = std::min<uint64_t>(o.ssd_bytes, 1ull << 30) / 4096 * 4096;  // as kvtierd sizes it
  so.recovery_check = SsdTierOptions::RecoveryCheck::kFull;
  so.worker_threads = 1;
  so.io_timeout = absl::Milliseconds(std::max(o.io_timeout_ms, 10000));
  so.log = [](std::string_view) {};
  auto tier = SsdTier::Open(so);
  if (!tier.ok()) {
    std::fprintf(stderr, "AUDIT open failed: %s\n", tier.status().ToString().c_str());
    shared->audit_failures.fetch_add(1);
    return 1;
  }
  shared->audit_recovery_drops.fetch_add((*tier)->Stats().recovery_drops);
  auto a = (*tier)->Audit(/*read_records=*/true);
  if (!a.ok()) {
    std::fprintf(stderr, "AUDIT failed: %s\n", a.status().ToString().c_str());
    shared->audit_failures.fetch_add(1);
    return 1;
  }
  shared->audit_rounds.fetch_add(1);
  shared->audit_records.fetch_add(a->records);
  shared->audit_leaked_bytes.fetch_add(a->leaked_bytes);
  shared->audit_overlapping.fetch_add(a->overlapping);
  shared->audit_index_mismatch.fetch_add(a->index_only + a->memory_only);
  shared->audit_unreadable.fetch_add(a->unreadable);
  shared->audit_corrupt.fetch_add(a->corrupt);
  if (!a->clean())
    std::fprintf(stderr,
                 "AUDIT unclean: records=%llu leaked=%llu overlapping=%llu index_only=%llu memory_only=%llu "
                 "unreadable=%llu corrupt=%llu\n",
                 (unsigned long long)a->records, (unsigned long long)a->leaked_bytes,
                 (unsigned long long)a->overlapping, (unsigned long long)a->index_only,
                 (unsigned long long)a->memory_only, (unsigned long long)a->unreadable, (unsigned long long)a->corrupt);
  return a->clean() ? 0 : 1;
}

}  // namespace kvtier::stress
