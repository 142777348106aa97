// FaultInjectingIoBackend: an IoBackend decorator that makes chosen ops fail the way disks fail, so the
// SSD tier's failure paths run in unit tests without root, a broken disk or a full filesystem.
//
//   auto fake = std::make_unique<FaultInjectingIoBackend>(std::make_unique<ThreadIoBackend>(2, 8));
//   fake->AddRule({.kind = IoKind::kWrite, .skip = 3, .count = 1, .action = FaultAction::kError,
//                  .error = ENOSPC});   // the 4th write fails with ENOSPC, the rest go through
//
// Rules are checked in the order they were added; the first rule that matches an op and still has count
// left decides it. Ops no rule takes go to the wrapped backend unchanged.
//
// Thread-safety: all methods may be called from any thread. Delayed completions run on the decorator's
// own timer thread; hung ops complete (with -ECANCELED) on ReleaseHung() or destruction.
#pragma once

#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "tiering/ssd/io_backend.h"

namespace kvtier {

enum class FaultAction : uint8_t {
  kError,       // complete with -error; nothing reaches the disk
  kShortWrite,  // write only the first `bytes` (rounded down to 4 KiB) and report that count
  kTornWrite,   // write only the first `bytes` but report the full length (a disk that lies, or power loss
                // after the acknowledgement)
  kDelay,       // do the op, deliver its completion `delay` later
  kHang,        // never complete until ReleaseHung() (a stuck disk)
};

struct FaultRule {
  IoKind kind = IoKind::kWrite;
  int64_t skip = 0;   // let this many matching ops through before faulting
  int64_t count = 1;  // fault this many ops; -1: every later matching op
  FaultAction action = FaultAction::kError;
  int error = 5;       // errno for kError (EIO)
  uint32_t bytes = 0;  // prefix that reaches the disk for kShortWrite / kTornWrite
  absl::Duration delay = absl::ZeroDuration();
  // Chance that a matching op (past `skip`, within `count`) is faulted; an op the draw spares goes on to
  // the next rule. 1: always (deterministic). Draws come from a fixed-seed generator (SetSeed).
  double probability = 1.0;
};

class FaultInjectingIoBackend final : public IoBackend {
 public:
  explicit FaultInjectingIoBackend(std::unique_ptr<IoBackend> base);
  ~FaultInjectingIoBackend() override;

  std::string_view name() const override { return "fault-injecting"; }
  absl::Status RegisterBuffers(std::span<const iovec> buffers) override { return base_->RegisterBuffers(buffers); }
  void Submit(const IoOp& op, absl::Time deadline, IoCallback done) override;

  void AddRule(const FaultRule& rule);
  void ClearRules();
  // Completes every hung op with -ECANCELED.
  void ReleaseHung();
  // Ops a rule has decided so far.
  int64_t faults_injected() const;
  // Seeds the generator behind FaultRule::probability (default 1).
  void SetSeed(uint64_t seed);

 private:
  struct Rule {
    FaultRule spec;
    int64_t seen = 0;
    int64_t fired = 0;
  };
  struct Timed {
    absl::Time when;
    IoCallback done;
    int64_t result;
  };
  void TimerLoop();
  void Schedule(absl::Time when, IoCallback done, int64_t result);

  std::unique_ptr<IoBackend> base_;
  mutable ssd::Mutex mu_;
  std::vector<Rule> rules_ ABSL_GUARDED_BY(mu_);
  std::vector<Timed> timed_ ABSL_GUARDED_BY(mu_);
  std::vector<IoCallback> hung_ ABSL_GUARDED_BY(mu_);
  int64_t faults_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t rng_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread timer_;
};

}  // namespace kvtier
