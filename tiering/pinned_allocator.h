// Pinned host memory for the host tier on a GPU machine, so that page-out and page-in DMA straight
// between device staging and the records (no bounce through a second buffer).
//
// Pinning is slow (cudaHostAlloc maps and locks every page), so memory is pinned in slabs of
// `slab_bytes` and carved into records of one size per slab; a freed record goes back to its size's free
// list and is reused by the next record of that size. Records carved one after another from a slab are
// adjacent, which lets the device backend merge their copies. Slabs are kept until the allocator dies:
// the HostTier bounds what is in use, and the retained memory is the peak use per record size.
//
// Thread-safety: Allocate and Free may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "tiering/host_tier.h"

namespace kvtier {

// Fails when the build has no CUDA or no device can be reached (pinning needs the driver).
absl::StatusOr<std::unique_ptr<HostAllocator>> MakePinnedHostAllocator(uint64_t slab_bytes = 64ull << 20);

}  // namespace kvtier
