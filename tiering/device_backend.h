// DeviceBackend: the compute device that owns GPU-tier memory and converts pages on it. The BlockStore
// touches GPU-tier bytes only through this interface, so the same tiering logic runs on a CUDA GPU and
// on the "host device" (host memory + CPU kernels) that CI and GPU-less machines use.
//
// Every batch call converts pages between the layout's geometries:
//   WriteActivations: activation pages (host memory, fp16/bf16) -> resident pages at `slots`
//   ReadActivations:  resident pages at `slots` -> activation pages (host memory)
//   PageOut:          resident pages at `slots` -> offload records (host memory: data, then parameters)
//                     in `offload` (the layout's offload geometry, or its first-block variant)
//   PageIn:           offload records (host memory) in `offload` -> resident pages at `slots`
// A call returns only after its copies and kernels have completed (the caller may then reuse or free
// the source), so a block becomes visible in its new tier only once its bytes are really there.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tiering/layout.h"
#include "tiering/page_arena.h"
#include "tiering/pool_export.h"

namespace kvtier {

// One Attend batch (decode when every sequence has one query; otherwise prefix-extend). Host memory.
struct AttendBatch {
  int32_t layer = 0;
  int32_t num_q_heads = 0;
  float sm_scale = 0.0f;                // 0: 1/sqrt(head_dim)
  std::vector<int32_t> seq_lens;        // [num_seqs]
  std::vector<int32_t> q_indptr;        // [num_seqs + 1]
  std::vector<int32_t> block_table;     // [num_seqs][block_table_stride] arena slots
  int32_t block_table_stride = 0;
  const uint8_t* q = nullptr;           // [q_indptr.back()][num_q_heads][head_dim], layout dtype
  uint8_t* out = nullptr;               // same shape
  bool IsDecode() const;
};

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;

  virtual std::string name() const = 0;  // "host" or "cuda:<n> <device name>"
  virtual bool is_gpu() const = 0;

  // Creates the layout's arena with room for `num_slots` pages (memory may be committed lazily).
  virtual absl::StatusOr<std::unique_ptr<PageArena>> CreateArena(const Layout& layout, int32_t num_slots) = 0;

  virtual absl::Status WriteActivations(const Layout& layout, PageArena& arena, std::span<const int32_t> slots,
                                        std::span<const uint8_t* const> src) = 0;
  virtual absl::Status ReadActivations(const Layout& layout, const PageArena& arena,
                                       std::span<const int32_t> slots, std::span<uint8_t* const> dst) = 0;
  virtual absl::Status PageOut(const Layout& layout, const PageGeometry& offload, const PageArena& arena,
                               std::span<const int32_t> slots, std::span<uint8_t* const> records) = 0;
  virtual absl::Status PageIn(const Layout& layout, const PageGeometry& offload, PageArena& arena,
                              std::span<const int32_t> slots, std::span<const uint8_t* const> records) = 0;
  // Paged attention over resident pages of the arena (the caller keeps them in place).
  virtual absl::Status Attend(const Layout& layout, const PageArena& arena, const AttendBatch& batch) = 0;
  // Backs `slots` of `arena` with memory, so that a process that mapped the pool (ExportPool) can write
  // their pages in place before the daemon ever touches them. The CUDA pool commits memory lazily (on a
  // slot's first write, page-in or this call); host arenas need nothing. Called for every Allocate.
  virtual absl::Status PrepareSlots(const PageArena& arena, std::span<const int32_t> slots) {
    (void)arena;
    (void)slots;
    return absl::OkStatus();
  }
  // What another process needs to map `arena` (fresh descriptors, owned by the result). The default:
  // this backend cannot export.
  virtual absl::StatusOr<PoolExport> ExportPool(const PageArena& arena) const {
    (void)arena;
    return absl::FailedPreconditionError("this device backend cannot export its pool");
  }
};

// The host device: arenas in (lazily committed) host memory, CPU kernels with `threads` workers.
std::unique_ptr<DeviceBackend> MakeHostDeviceBackend(int threads);

}  // namespace kvtier
