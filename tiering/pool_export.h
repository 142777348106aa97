// PoolExport: what another process needs to map one layout arena of the GPU tier (the GetPoolHandle
// RPC; docs/gpu_pool_export.md). Device-neutral: the host device exports a memfd, the CUDA backend its
// VMM allocation handles (POSIX file descriptors) or a legacy cudaIpcMemHandle.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvtier {

struct PoolExport {
  enum class Kind : uint8_t { kHostMemfd, kCudaVmm, kCudaIpc };
  struct Chunk {
    uint64_t offset = 0;  // from the pool's base
    uint64_t bytes = 0;
    int fd = -1;  // a fresh descriptor owned by the export (ClosePoolExport closes it)
  };
  Kind kind = Kind::kHostMemfd;
  int device = 0;
  uint64_t reserved_bytes = 0;
  uint64_t granularity = 0;
  std::vector<Chunk> chunks;
  std::string ipc_handle;  // kCudaIpc: the cudaIpcMemHandle_t bytes
  uint64_t params_offset = 0;  // the arena's parameter records, from the pool's base
  // The arena (filled in by BlockStore::ExportPool).
  int32_t num_slots = 0;
  uint64_t page_bytes = 0;
  uint32_t param_bytes = 0;
};

void ClosePoolExport(PoolExport& e);

}  // namespace kvtier
