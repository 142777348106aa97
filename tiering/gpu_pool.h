// GpuPool: the device memory behind one layout arena, and how another process maps it.
//
// With CUDA virtual memory management (the preferred path) the pool reserves its whole virtual range up
// front and backs it with physical memory lazily, in chunks of a multiple of the allocation granularity
// (2 MiB on H100/H200), each created exportable as a POSIX file descriptor. The device backend commits
// the chunks under a slot before it first writes the slot, so a pool sized for growth costs only what is
// used. Committed chunks stay committed until the pool dies (shrinking needs a hook from the arena's slot
// free list: not done yet). Without VMM (an old driver, or a device without POSIX-FD handles) the pool
// is one cudaMalloc of the whole range, exported through cudaIpcGetMemHandle.
//
// An engine maps an exported pool once (GpuPoolMapping::Import) and then exchanges only slot ids: the
// virtual layout of the mapping equals the pool's (chunk at offset o lands at mapping base + o).
//
// Thread-safety: Commit, IsCommitted and Export may be called from any thread.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "tiering/sync.h"

namespace kvtier {

class DeviceBackend;
class PageArena;

// What a GetPoolHandle RPC hands to an engine (file descriptors travel over the unix socket with
// SCM_RIGHTS).
struct GpuPoolExport {
  enum class Kind : uint8_t { kVmmPosixFd, kLegacyIpc };
  struct Chunk {
    uint64_t offset = 0;  // from the pool's base
    uint64_t bytes = 0;
    int fd = -1;  // a fresh descriptor; whoever holds the export closes it (CloseExportFds)
  };
  Kind kind = Kind::kVmmPosixFd;
  int device = 0;
  uint64_t reserved_bytes = 0;  // the pool's whole virtual range
  uint64_t granularity = 0;     // VMM: mapping alignment for the importer
  std::vector<Chunk> chunks;    // kVmmPosixFd: the committed chunks, ascending offsets
  cudaIpcMemHandle_t ipc{};     // kLegacyIpc: the whole range
};

void CloseExportFds(GpuPoolExport& e);

class GpuPool {
 public:
  // Reserves `bytes` on `device` (VMM if available, else one cudaMalloc). Makes `device` current.
  static absl::StatusOr<std::unique_ptr<GpuPool>> Create(int device, uint64_t bytes);
  ~GpuPool();
  GpuPool(const GpuPool&) = delete;
  GpuPool& operator=(const GpuPool&) = delete;

  uint8_t* base() const { return base_; }
  uint64_t bytes() const { return bytes_; }
  bool is_vmm() const { return vmm_; }
  uint64_t committed_bytes() const;

  // Backs [offset, offset + len) with device memory (VMM: maps the missing chunks; otherwise a no-op).
  absl::Status Commit(uint64_t offset, uint64_t len);
  bool IsCommitted(uint64_t offset, uint64_t len) const;

  absl::StatusOr<GpuPoolExport> Export() const;

 private:
  GpuPool(int device, uint64_t bytes) : device_(device), bytes_(bytes) {}
  absl::Status InitVmm();
  absl::Status InitLegacy();
  absl::Status CommitChunk(size_t chunk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int device_;
  uint64_t bytes_;  // rounded up to the chunk size with VMM
  uint8_t* base_ = nullptr;
  bool vmm_ = false;
  uint64_t granularity_ = 0;
  uint64_t chunk_bytes_ = 0;
  mutable Mutex mu_;
  std::vector<CUmemGenericAllocationHandle> handles_ ABSL_GUARDED_BY(mu_);  // 0: chunk not committed
  uint64_t committed_ ABSL_GUARDED_BY(mu_) = 0;
};

// A pool mapped from an export (in an engine, or in-process for tests). Unmaps on destruction.
class GpuPoolMapping {
 public:
  // Maps the export on `device`; does not take the export's descriptors (the caller still closes them).
  static absl::StatusOr<std::unique_ptr<GpuPoolMapping>> Import(const GpuPoolExport& e);
  ~GpuPoolMapping();
  GpuPoolMapping(const GpuPoolMapping&) = delete;
  GpuPoolMapping& operator=(const GpuPoolMapping&) = delete;

  uint8_t* base() const { return base_; }

 private:
  GpuPoolMapping() = default;
  GpuPoolExport::Kind kind_ = GpuPoolExport::Kind::kVmmPosixFd;
  uint8_t* base_ = nullptr;
  uint64_t reserved_bytes_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> mapped_;  // VMM: (offset, bytes)
  std::vector<CUmemGenericAllocationHandle> handles_;
};

// The export of `arena`'s pool when `device` is a CUDA device backend and the arena one of its own
// (FailedPrecondition otherwise). Implemented by tiering/cuda_device_backend.cc.
absl::StatusOr<GpuPoolExport> ExportArena(const DeviceBackend& device, const PageArena& arena);

}  // namespace kvtier
