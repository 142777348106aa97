// FaultInjectingDeviceBackend: a DeviceBackend decorator that makes chosen copies fail or run slow, the
// way a GPU copy engine fails (a failed or timed-out cudaMemcpyAsync, an ECC error, a hung stream), so
// that the BlockStore's failure paths run on the host device in CI and on a real GPU alike. Enabled in
// kvtierd only by a test flag (DaemonConfig.fault_spec, see daemon/fault_spec.h).
//
// A failing copy is made as nasty as it can be: when the destination is host memory (ReadActivations,
// PageOut) the decorator first scribbles garbage over it, as a copy that died half-way would leave it,
// and then reports the error. Whoever serves or keeps those bytes after an error is caught by the
// self-verifying content of the stress tools.
//
// Thread-safety: all methods may be called concurrently (the random draws are under a mutex).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tiering/device_backend.h"

namespace kvtier {

enum class DeviceOp : uint8_t { kWriteActivations, kReadActivations, kPageOut, kPageIn };

struct DeviceFaultRule {
  DeviceOp op = DeviceOp::kPageIn;
  double probability = 1.0;  // chance per call
  bool fail = true;          // true: the call fails (UNAVAILABLE); false: it is delayed by `delay`
  absl::Duration delay = absl::ZeroDuration();
};

class FaultInjectingDeviceBackend final : public DeviceBackend {
 public:
  FaultInjectingDeviceBackend(std::unique_ptr<DeviceBackend> base, std::vector<DeviceFaultRule> rules, uint64_t seed);

  std::string name() const override { return base_->name() + " (fault-injecting)"; }
  bool is_gpu() const override { return base_->is_gpu(); }
  absl::StatusOr<std::unique_ptr<PageArena>> CreateArena(const Layout& layout, int32_t num_slots) override {
    return base_->CreateArena(layout, num_slots);
  }
  absl::Status WriteActivations(const Layout& layout, PageArena& arena, std::span<const int32_t> slots,
                                std::span<const uint8_t* const> src) override;
  absl::Status ReadActivations(const Layout& layout, const PageArena& arena, std::span<const int32_t> slots,
                               std::span<uint8_t* const> dst) override;
  absl::Status PageOut(const Layout& layout, const PageGeometry& offload, const PageArena& arena,
                       std::span<const int32_t> slots, std::span<uint8_t* const> records) override;
  absl::Status PageIn(const Layout& layout, const PageGeometry& offload, PageArena& arena,
                      std::span<const int32_t> slots, std::span<const uint8_t* const> records) override;
  absl::Status PrepareSlots(const PageArena& arena, std::span<const int32_t> slots) override {
    return base_->PrepareSlots(arena, slots);
  }
  absl::Status Attend(const Layout& layout, const PageArena& arena, const AttendBatch& batch) override {
    return base_->Attend(layout, arena, batch);
  }

  int64_t faults_injected() const;

 private:
  // What to do with one call: sleep (already done on return) and whether to fail it.
  bool Decide(DeviceOp op);

  std::unique_ptr<DeviceBackend> base_;
  const std::vector<DeviceFaultRule> rules_;
  mutable absl::Mutex mu_;
  uint64_t rng_ ABSL_GUARDED_BY(mu_);
  int64_t faults_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier
