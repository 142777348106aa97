// CudaDriver: the few CUDA driver API entry points the GPU pool needs (virtual memory management and
// shareable handles), looked up at run time through cudart's cudaGetDriverEntryPointByVersion. kvtier
// never links libcuda: CI machines have no driver, and the daemon must still start there and serve from
// the host device.
#pragma once

#include <cuda.h>

#include "absl/status/statusor.h"

namespace kvtier {

struct CudaDriverApi {
  decltype(&::cuGetErrorString) GetErrorString = nullptr;
  decltype(&::cuDeviceGet) DeviceGet = nullptr;
  decltype(&::cuDeviceGetAttribute) DeviceGetAttribute = nullptr;
  decltype(&::cuMemGetAllocationGranularity) MemGetAllocationGranularity = nullptr;
  decltype(&::cuMemCreate) MemCreate = nullptr;
  decltype(&::cuMemRelease) MemRelease = nullptr;
  decltype(&::cuMemAddressReserve) MemAddressReserve = nullptr;
  decltype(&::cuMemAddressFree) MemAddressFree = nullptr;
  decltype(&::cuMemMap) MemMap = nullptr;
  decltype(&::cuMemUnmap) MemUnmap = nullptr;
  decltype(&::cuMemSetAccess) MemSetAccess = nullptr;
  decltype(&::cuMemExportToShareableHandle) MemExportToShareableHandle = nullptr;
  decltype(&::cuMemImportFromShareableHandle) MemImportFromShareableHandle = nullptr;
  decltype(&::cuPointerGetAttribute) PointerGetAttribute = nullptr;
};

// Resolves the entry points once (thread-safe) and caches the outcome: the table, or why it is not
// available (no driver, a driver too old for VMM).
absl::StatusOr<const CudaDriverApi*> CudaDriver();

}  // namespace kvtier
