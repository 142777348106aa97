// Process-wide abseil settings for latency-sensitive gRPC processes (kvtierd, and engines linking the C++
// client against the distribution's libraries).
//
// gRPC 1.51 locks through absl::Mutex, and Debian's abseil is built without NDEBUG, which leaves absl's
// deadlock detection on: every acquisition then updates one process-wide lock-order graph under one global
// lock, serialising all of gRPC's threads (it showed in perf profiles of bench/daemon/rpc_bench). kvtier's
// own locks are std::mutex (tiering/sync.h), checked by TSan in the test suite instead. The Python client is
// unaffected (grpcio bundles a release-built abseil).
#pragma once

#include <cstdlib>
#include <string_view>

#include "absl/synchronization/mutex.h"

namespace kvtier {

// Turns absl's deadlock detection off unless KVTIER_ABSL_DEADLOCK_DETECTION=1 (for debugging gRPC's lock
// order). Call once at the start of main, before any thread starts.
inline void ConfigureAbslForLowLatency() {
  const char* keep = std::getenv("KVTIER_ABSL_DEADLOCK_DETECTION");
  if (keep == nullptr || std::string_view(keep) != "1") absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

}  // namespace kvtier
