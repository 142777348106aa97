#include "tiering/fault_device_backend.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

const char* OpName(DeviceOp op) {
  switch (op) {
    case DeviceOp::kWriteActivations:
      return "write_activations";
    case DeviceOp::kReadActivations:
      return "read_activations";
    case DeviceOp::kPageOut:
      return "page_out";
    case DeviceOp::kPageIn:
      return "page_in";
  }
  return "?";
}

absl::Status Injected(DeviceOp op) {
  return absl::UnavailableError(absl::StrCat("injected device fault: ", OpName(op), " copy failed"));
}

// What a copy that died half-way leaves behind: the first half of each destination overwritten.
void Scribble(std::span<uint8_t* const> dst, uint64_t bytes) {
  for (uint8_t* p : dst) std::memset(p, 0xA5, bytes / 2);
}

}  // namespace

FaultInjectingDeviceBackend::FaultInjectingDeviceBackend(std::unique_ptr<DeviceBackend> base,
                                                         std::vector<DeviceFaultRule> rules, uint64_t seed)
    : base_(std::move(base)), rules_(std::move(rules)), rng_(seed | 1) {}

int64_t FaultInjectingDeviceBackend::faults_injected() const {
  absl::MutexLock lock(&mu_);
  return faults_;
}

bool FaultInjectingDeviceBackend::Decide(DeviceOp op) {
  absl::Duration sleep = absl::ZeroDuration();
  bool fail = false;
  {
    absl::MutexLock lock(&mu_);
    for (const DeviceFaultRule& r : rules_) {
      if (r.op != op) continue;
      rng_ = rng_ * 6364136223846793005ULL + 1442695040888963407ULL;
      if (static_cast<double>(rng_ >> 11) * 0x1.0p-53 >= r.probability) continue;
      ++faults_;
      if (r.fail) {
        fail = true;
        break;
      }
      sleep += r.delay;
    }
  }
  if (sleep > absl::ZeroDuration()) absl::SleepFor(sleep);
  return fail;
}

absl::Status FaultInjectingDeviceBackend::WriteActivations(const Layout& layout, PageArena& arena,
                                                           std::span<const int32_t> slots,
                                                           std::span<const uint8_t* const> src) {
  if (Decide(DeviceOp::kWriteActivations)) return Injected(DeviceOp::kWriteActivations);
  return base_->WriteActivations(layout, arena, slots, src);
}

absl::Status FaultInjectingDeviceBackend::ReadActivations(const Layout& layout, const PageArena& arena,
                                                          std::span<const int32_t> slots,
                                                          std::span<uint8_t* const> dst) {
  if (Decide(DeviceOp::kReadActivations)) {
    Scribble(dst, layout.activation_geometry.page_bytes());
    return Injected(DeviceOp::kReadActivations);
  }
  return base_->ReadActivations(layout, arena, slots, dst);
}

absl::Status FaultInjectingDeviceBackend::PageOut(const Layout& layout, const PageGeometry& offload,
                                                  const PageArena& arena, std::span<const int32_t> slots,
                                                  std::span<uint8_t* const> records) {
  if (Decide(DeviceOp::kPageOut)) {
    Scribble(records, offload.page_bytes());
    return Injected(DeviceOp::kPageOut);
  }
  return base_->PageOut(layout, offload, arena, slots, records);
}

absl::Status FaultInjectingDeviceBackend::PageIn(const Layout& layout, const PageGeometry& offload, PageArena& arena,
                                                 std::span<const int32_t> slots,
                                                 std::span<const uint8_t* const> records) {
  if (Decide(DeviceOp::kPageIn)) return Injected(DeviceOp::kPageIn);
  return base_->PageIn(layout, offload, arena, slots, records);
}

}  // namespace kvtier
