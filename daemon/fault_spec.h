// Fault specs: the test-only way to make a real kvtierd fail like a bad disk or a bad GPU copy engine.
// DaemonConfig.fault_spec (flag --fault_spec=...) is a ';'-separated list of rules, each
//   TARGET:ACTION[:key=value,key=value...]
// targets and their actions:
//   ssd_read | ssd_write | ssd_sync   error (errno=N, default 5 = EIO) | enospc | short (bytes=N) |
//                                     torn (bytes=N) | delay (ms=N) | hang
//   device_write | device_read | device_pageout | device_pagein   fail | delay (ms=N)
// keys for every rule: p=PROBABILITY (default 1); for ssd rules also skip=N, count=N (default -1: no limit).
// One more item, seed=N, seeds the random draws (default 1), so a failing run can be repeated.
// Example: "ssd_write:error:p=0.02;ssd_read:delay:ms=30,p=0.05;device_pagein:fail:p=0.01;seed=7".
// An empty spec means no faults. Never set in production: every rule makes the daemon worse on purpose.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tiering/device_backend.h"
#include "tiering/fault_device_backend.h"
#include "tiering/ssd/fault_io_backend.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier {

struct FaultPlan {
  std::vector<FaultRule> ssd;
  std::vector<DeviceFaultRule> device;
  uint64_t seed = 1;
  bool empty() const { return ssd.empty() && device.empty(); }
};

// INVALID_ARGUMENT naming the bad rule when the spec does not parse.
absl::StatusOr<FaultPlan> ParseFaultSpec(absl::string_view spec);

// The SSD tier's usual backend (io_uring, else pread/pwrite threads, as SsdTier::Open would pick) wrapped
// in a FaultInjectingIoBackend carrying plan.ssd.
std::unique_ptr<IoBackend> MakeFaultInjectingSsdBackend(const SsdTierOptions& options, const FaultPlan& plan);

}  // namespace kvtier
