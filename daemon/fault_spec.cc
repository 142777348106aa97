#include "daemon/fault_spec.h"

#include <cerrno>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tiering/ssd/thread_io_backend.h"
#include "tiering/ssd/uring_io_backend.h"

namespace kvtier {
namespace {

struct Params {
  double p = 1.0;
  int64_t skip = 0, count = -1, ms = 0, bytes = 0, err = EIO;
};

absl::Status ParseParams(absl::string_view text, absl::string_view rule, Params* out) {
  if (text.empty()) return absl::OkStatus();
  for (absl::string_view kv : absl::StrSplit(text, ',')) {
    const std::pair<absl::string_view, absl::string_view> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    bool ok = false;
    if (p.first == "p") {
      ok = absl::SimpleAtod(p.second, &out->p) && out->p >= 0 && out->p <= 1;
    } else if (p.first == "skip") {
      ok = absl::SimpleAtoi(p.second, &out->skip) && out->skip >= 0;
    } else if (p.first == "count") {
      ok = absl::SimpleAtoi(p.second, &out->count) && out->count >= -1;
    } else if (p.first == "ms") {
      ok = absl::SimpleAtoi(p.second, &out->ms) && out->ms >= 0 && out->ms <= 3600000;
    } else if (p.first == "bytes") {
      ok = absl::SimpleAtoi(p.second, &out->bytes) && out->bytes >= 0 && out->bytes <= (1ll << 31);
    } else if (p.first == "errno") {
      ok = absl::SimpleAtoi(p.second, &out->err) && out->err > 0 && out->err < 4096;
    }
    if (!ok) return absl::InvalidArgumentError(absl::StrCat("fault_spec rule '", rule, "': bad parameter '", kv, "'"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FaultPlan> ParseFaultSpec(absl::string_view spec) {
  FaultPlan plan;
  for (absl::string_view rule : absl::StrSplit(spec, ';', absl::SkipWhitespace())) {
    rule = absl::StripAsciiWhitespace(rule);
    if (absl::ConsumePrefix(&rule, "seed=")) {
      if (!absl::SimpleAtoi(rule, &plan.seed)) return absl::InvalidArgumentError("fault_spec: bad seed");
      continue;
    }
    const std::vector<absl::string_view> parts = absl::StrSplit(rule, absl::MaxSplits(':', 2));
    if (parts.size() < 2)
      return absl::InvalidArgumentError(absl::StrCat("fault_spec rule '", rule, "': expected TARGET:ACTION[:params]"));
    Params p;
    if (absl::Status s = ParseParams(parts.size() > 2 ? parts[2] : "", rule, &p); !s.ok()) return s;
    const absl::string_view target = parts[0], action = parts[1];
    auto bad_action = [&] {
      return absl::InvalidArgumentError(absl::StrCat("fault_spec rule '", rule, "': unknown action '", action, "'"));
    };
    if (absl::StartsWith(target, "ssd_")) {
      FaultRule r;
      if (target == "ssd_read") {
        r.kind = IoKind::kRead;
      } else if (target == "ssd_write") {
        r.kind = IoKind::kWrite;
      } else if (target == "ssd_sync") {
        r.kind = IoKind::kSync;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("fault_spec rule '", rule, "': unknown target"));
      }
      r.skip = p.skip;
      r.count = p.count;
      r.probability = p.p;
      if (action == "error") {
        r.action = FaultAction::kError;
        r.error = static_cast<int>(p.err);
      } else if (action == "enospc") {
        r.action = FaultAction::kError;
        r.error = ENOSPC;
      } else if (action == "short" || action == "torn") {
        if (r.kind != IoKind::kWrite)
          return absl::InvalidArgumentError(absl::StrCat("fault_spec rule '", rule, "': only writes can be short"));
        r.action = action == "short" ? FaultAction::kShortWrite : FaultAction::kTornWrite;
        r.bytes = static_cast<uint32_t>(p.bytes);
      } else if (action == "delay") {
        r.action = FaultAction::kDelay;
        r.delay = absl::Milliseconds(p.ms);
      } else if (action == "hang") {
        r.action = FaultAction::kHang;
      } else {
        return bad_action();
      }
      plan.ssd.push_back(r);
      continue;
    }
    DeviceFaultRule r;
    if (target == "device_write") {
      r.op = DeviceOp::kWriteActivations;
    } else if (target == "device_read") {
      r.op = DeviceOp::kReadActivations;
    } else if (target == "device_pageout") {
      r.op = DeviceOp::kPageOut;
    } else if (target == "device_pagein") {
      r.op = DeviceOp::kPageIn;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("fault_spec rule '", rule, "': unknown target '", target, "'"));
    }
    r.probability = p.p;
    if (action == "fail") {
      r.fail = true;
    } else if (action == "delay") {
      r.fail = false;
      r.delay = absl::Milliseconds(p.ms);
    } else {
      return bad_action();
    }
    plan.device.push_back(r);
  }
  return plan;
}

std::unique_ptr<IoBackend> MakeFaultInjectingSsdBackend(const SsdTierOptions& options, const FaultPlan& plan) {
  std::unique_ptr<IoBackend> base;
  if (options.use_io_uring) {
    auto uring = UringIoBackend::Create(options.queue_depth);
    if (uring.ok()) base = *std::move(uring);
  }
  if (base == nullptr) base = std::make_unique<ThreadIoBackend>(std::max(1, options.io_threads), options.queue_depth);
  auto fake = std::make_unique<FaultInjectingIoBackend>(std::move(base));
  fake->SetSeed(plan.seed);
  for (const FaultRule& r : plan.ssd) fake->AddRule(r);
  return fake;
}

}  // namespace kvtier
