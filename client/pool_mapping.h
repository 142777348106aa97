// MappedPool: a layout's GPU-tier pool mapped into an engine process (GetPoolHandle + the descriptor
// socket), so that the engine reads and writes pages and runs kvtier's attention kernels itself, on its
// own stream, with no RPC per layer (client/local_attention.h). docs/gpu_pool_export.md.
//
// On the host device the pool is a memfd mapped MAP_SHARED (CPU kernels); on a CUDA device it is the
// daemon's VMM allocation (or legacy IPC range) mapped on the same device (CUDA kernels). Slot s's page
// is page(s), its parameter record page_params(s); which slots hold which blocks comes from Allocate,
// Lookup and Prefetch, and a slot stays the block's only while the session pins (or owns) the block.
//
// A CUDA VMM mapping covers the chunks the daemon had committed when it was made; the daemon commits a
// slot's chunk when it first writes the slot, so blocks it wrote (WriteBlocks, page-ins) are covered, and
// a later MapPool covers chunks committed since.
//
// Thread-safety: immutable after Map; the memory itself is shared with the daemon and other engines.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/attention/attention.h"
#include "kernels/page_geometry.h"
#include "kvtier/v1/kvtier.pb.h"

namespace kvtier {

class GpuPoolMapping;

class MappedPool {
 public:
  // Maps the pool described by `handle` with its descriptors (which the caller still closes).
  static absl::StatusOr<std::unique_ptr<MappedPool>> Map(const kvtier::v1::GetPoolHandleResponse& handle,
                                                         const std::vector<int>& fds);
  ~MappedPool();
  MappedPool(const MappedPool&) = delete;
  MappedPool& operator=(const MappedPool&) = delete;

  bool on_gpu() const { return kind_ != kvtier::v1::POOL_KIND_HOST_MEMFD; }
  int device() const { return device_; }
  int32_t num_slots() const { return num_slots_; }
  const PageGeometry& geometry() const { return geometry_; }
  ActDtype dtype() const { return dtype_; }
  uint8_t* page(int32_t slot) const { return base_ + static_cast<uint64_t>(slot) * geometry_.page_bytes(); }
  uint8_t* page_params(int32_t slot) const {
    return geometry_.param_bytes() ? base_ + params_offset_ + static_cast<uint64_t>(slot) * geometry_.param_bytes()
                                   : nullptr;
  }
  // The pool as the attention kernels take it.
  PagedKvPool kv_pool() const {
    return {base_, geometry_.param_bytes() ? base_ + params_offset_ : nullptr, num_slots_};
  }

 private:
  MappedPool() = default;
  kvtier::v1::PoolKind kind_ = kvtier::v1::POOL_KIND_UNSPECIFIED;
  int device_ = 0;
  uint8_t* base_ = nullptr;
  uint64_t mapped_bytes_ = 0;  // host memfd mapping
  uint64_t params_offset_ = 0;
  int32_t num_slots_ = 0;
  PageGeometry geometry_;
  ActDtype dtype_ = ActDtype::kFp16;
  std::unique_ptr<GpuPoolMapping> gpu_;  // CUDA kinds
};

}  // namespace kvtier
