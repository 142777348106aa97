#include "tiering/cuda_driver.h"

#include <cuda_runtime_api.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "tiering/cuda_call.h"

namespace kvtier {
namespace {

// The ABI version the entry points are requested at (CUDA 12.0: every symbol below exists there).
constexpr unsigned int kDriverAbi = 12000;

template <class Fn>
absl::Status Resolve(const char* symbol, Fn* fn) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  KVTIER_RETURN_IF_CUDA_ERROR(cudaGetDriverEntryPointByVersion(symbol, &p, kDriverAbi, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || p == nullptr)
    return absl::UnavailableError(absl::StrCat("driver entry point ", symbol, " not found"));
  *fn = reinterpret_cast<Fn>(p);
  return absl::OkStatus();
}

absl::Status Load(CudaDriverApi& api) {
  for (absl::Status st : {Resolve("cuGetErrorString", &api.GetErrorString), Resolve("cuDeviceGet", &api.DeviceGet),
                          Resolve("cuDeviceGetAttribute", &api.DeviceGetAttribute),
                          Resolve("cuMemGetAllocationGranularity", &api.MemGetAllocationGranularity),
                          Resolve("cuMemCreate", &api.MemCreate), Resolve("cuMemRelease", &api.MemRelease),
                          Resolve("cuMemAddressReserve", &api.MemAddressReserve),
                          Resolve("cuMemAddressFree", &api.MemAddressFree), Resolve("cuMemMap", &api.MemMap),
                          Resolve("cuMemUnmap", &api.MemUnmap), Resolve("cuMemSetAccess", &api.MemSetAccess),
                          Resolve("cuMemExportToShareableHandle", &api.MemExportToShareableHandle),
                          Resolve("cuMemImportFromShareableHandle", &api.MemImportFromShareableHandle),
                          Resolve("cuPointerGetAttribute", &api.PointerGetAttribute)}) {
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<const CudaDriverApi*> CudaDriver() {
  static CudaDriverApi api;
  static absl::Status status;
  static std::once_flag once;
  std::call_once(once, [] { status = Load(api); });
  if (!status.ok()) return status;
  return &api;
}

absl::Status DriverCall(CUresult res, const char* what) {
  if (res == CUDA_SUCCESS) return absl::OkStatus();
  const char* text = "unknown driver error";
  auto api = CudaDriver();
  if (api.ok() && (*api)->GetErrorString) (*api)->GetErrorString(res, &text);
  return absl::InternalError(absl::StrCat(what, ": CUresult ", static_cast<int>(res), " ", text));
}

}  // namespace kvtier
