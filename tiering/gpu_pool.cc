#include "tiering/gpu_pool.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "tiering/cuda_call.h"
#include "tiering/cuda_driver.h"

namespace kvtier {
namespace {

// Physical memory is committed in chunks of this size (rounded to the granularity): large enough that a
// big pool needs few handles, small enough that a small layout does not pin much.
constexpr uint64_t kTargetChunkBytes = 32ull << 20;

uint64_t RoundUp(uint64_t x, uint64_t m) { return (x + m - 1) / m * m; }

CUmemAllocationProp DeviceProp(int device) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  return prop;
}

CUmemAccessDesc ReadWrite(int device) {
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = device;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  return access;
}

CUdeviceptr Ptr(const uint8_t* p) { return reinterpret_cast<CUdeviceptr>(p); }

// VMM with POSIX-FD export: needs the driver entry points and both device attributes.
bool VmmSupported(int device) {
  auto drv = CudaDriver();
  if (!drv.ok()) return false;
  CUdevice dev = 0;
  int vmm = 0, posix_fd = 0;
  if ((*drv)->DeviceGet(&dev, device) != CUDA_SUCCESS) return false;
  if ((*drv)->DeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev) != CUDA_SUCCESS)
    return false;
  if ((*drv)->DeviceGetAttribute(&posix_fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev) !=
      CUDA_SUCCESS)
    return false;
  return vmm && posix_fd;
}

}  // namespace

void CloseExportFds(GpuPoolExport& e) {
  for (auto& c : e.chunks) {
    if (c.fd >= 0) close(c.fd);
    c.fd = -1;
  }
}

absl::StatusOr<std::unique_ptr<GpuPool>> GpuPool::Create(int device, uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("empty GPU pool");
  KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
  KVTIER_RETURN_IF_CUDA_ERROR(cudaFree(nullptr));  // creates the primary context the driver calls use
  std::unique_ptr<GpuPool> pool(new GpuPool(device, bytes));
  if (VmmSupported(device)) {
    absl::Status st = pool->InitVmm();
    if (st.ok()) return pool;
    pool->bytes_ = bytes;  // fall back to the legacy allocation
  }
  absl::Status st = pool->InitLegacy();
  if (!st.ok()) return st;
  return pool;
}

absl::Status GpuPool::InitVmm() {
  const CudaDriverApi& drv = **CudaDriver();
  const CUmemAllocationProp prop = DeviceProp(device_);
  size_t gran = 0;
  KVTIER_RETURN_IF_DRIVER_ERROR(drv.MemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  granularity_ = gran;
  chunk_bytes_ = RoundUp(std::min(kTargetChunkBytes, bytes_), granularity_);
  bytes_ = RoundUp(bytes_, chunk_bytes_);
  CUdeviceptr va = 0;
  KVTIER_RETURN_IF_DRIVER_ERROR(drv.MemAddressReserve(&va, bytes_, granularity_, 0, 0));
  base_ = reinterpret_cast<uint8_t*>(va);
  vmm_ = true;
  MutexLock lock(&mu_);
  handles_.assign(bytes_ / chunk_bytes_, 0);
  return absl::OkStatus();
}

absl::Status GpuPool::InitLegacy() {
  void* p = nullptr;
  KVTIER_RETURN_IF_CUDA_ERROR(cudaMalloc(&p, bytes_));
  base_ = static_cast<uint8_t*>(p);
  MutexLock lock(&mu_);
  committed_ = bytes_;
  return absl::OkStatus();
}

GpuPool::~GpuPool() {
  if (!base_) return;
  IgnoreCudaError(cudaSetDevice(device_));
  if (!vmm_) {
    IgnoreCudaError(cudaFree(base_));
    return;
  }
  const CudaDriverApi& drv = **CudaDriver();
  MutexLock lock(&mu_);
  for (size_t c = 0; c < handles_.size(); ++c) {
    if (!handles_[c]) continue;
    (void)drv.MemUnmap(Ptr(base_) + c * chunk_bytes_, chunk_bytes_);
    (void)drv.MemRelease(handles_[c]);
  }
  (void)drv.MemAddressFree(Ptr(base_), bytes_);
}

uint64_t GpuPool::committed_bytes() const {
  MutexLock lock(&mu_);
  return committed_;
}

absl::Status GpuPool::CommitChunk(size_t c) {
  const CudaDriverApi& drv = **CudaDriver();
  const CUmemAllocationProp prop = DeviceProp(device_);
  CUmemGenericAllocationHandle h = 0;
  KVTIER_RETURN_IF_DRIVER_ERROR(drv.MemCreate(&h, chunk_bytes_, &prop, 0));
  const CUdeviceptr at = Ptr(base_) + c * chunk_bytes_;
  absl::Status st = DriverCall(drv.MemMap(at, chunk_bytes_, 0, h, 0), "cuMemMap");
  if (st.ok()) {
    const CUmemAccessDesc access = ReadWrite(device_);
    st = DriverCall(drv.MemSetAccess(at, chunk_bytes_, &access, 1), "cuMemSetAccess");
    if (!st.ok()) (void)drv.MemUnmap(at, chunk_bytes_);
  }
  if (!st.ok()) {
    (void)drv.MemRelease(h);
    return st;
  }
  handles_[c] = h;
  committed_ += chunk_bytes_;
  return absl::OkStatus();
}

absl::Status GpuPool::Commit(uint64_t offset, uint64_t len) {
  if (offset + len > bytes_) return absl::OutOfRangeError("commit beyond the GPU pool");
  if (!vmm_ || len == 0) return absl::OkStatus();
  MutexLock lock(&mu_);
  for (uint64_t c = offset / chunk_bytes_; c <= (offset + len - 1) / chunk_bytes_; ++c) {
    if (handles_[c]) continue;
    KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
    absl::Status st = CommitChunk(c);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

bool GpuPool::IsCommitted(uint64_t offset, uint64_t len) const {
  if (offset + len > bytes_) return false;
  if (!vmm_ || len == 0) return true;
  MutexLock lock(&mu_);
  for (uint64_t c = offset / chunk_bytes_; c <= (offset + len - 1) / chunk_bytes_; ++c)
    if (!handles_[c]) return false;
  return true;
}

absl::StatusOr<GpuPoolExport> GpuPool::Export() const {
  GpuPoolExport e;
  e.device = device_;
  e.reserved_bytes = bytes_;
  if (!vmm_) {
    e.kind = GpuPoolExport::Kind::kLegacyIpc;
    KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
    KVTIER_RETURN_IF_CUDA_ERROR(cudaIpcGetMemHandle(&e.ipc, base_));
    return e;
  }
  e.granularity = granularity_;
  const CudaDriverApi& drv = **CudaDriver();
  MutexLock lock(&mu_);
  for (size_t c = 0; c < handles_.size(); ++c) {
    if (!handles_[c]) continue;
    int fd = -1;
    absl::Status st =
        DriverCall(drv.MemExportToShareableHandle(&fd, handles_[c], CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                   "cuMemExportToShareableHandle");
    if (!st.ok()) {
      CloseExportFds(e);
      return st;
    }
    e.chunks.push_back({c * chunk_bytes_, chunk_bytes_, fd});
  }
  return e;
}

absl::StatusOr<std::unique_ptr<GpuPoolMapping>> GpuPoolMapping::Import(const GpuPoolExport& e) {
  KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(e.device));
  std::unique_ptr<GpuPoolMapping> m(new GpuPoolMapping());
  m->kind_ = e.kind;
  m->reserved_bytes_ = e.reserved_bytes;
  if (e.kind == GpuPoolExport::Kind::kLegacyIpc) {
    void* p = nullptr;
    KVTIER_RETURN_IF_CUDA_ERROR(cudaIpcOpenMemHandle(&p, e.ipc, cudaIpcMemLazyEnablePeerAccess));
    m->base_ = static_cast<uint8_t*>(p);
    return m;
  }
  auto drv_or = CudaDriver();
  if (!drv_or.ok()) return drv_or.status();
  const CudaDriverApi& drv = **drv_or;
  CUdeviceptr va = 0;
  KVTIER_RETURN_IF_DRIVER_ERROR(drv.MemAddressReserve(&va, e.reserved_bytes, e.granularity, 0, 0));
  m->base_ = reinterpret_cast<uint8_t*>(va);
  const CUmemAccessDesc access = ReadWrite(e.device);
  for (const auto& c : e.chunks) {
    CUmemGenericAllocationHandle h = 0;
    KVTIER_RETURN_IF_DRIVER_ERROR(drv.MemImportFromShareableHandle(
        &h, reinterpret_cast<void*>(static_cast<uintptr_t>(c.fd)), CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    m->handles_.push_back(h);  // released by the destructor, also on the error paths below
    KVTIER_RETURN_IF_DRIVER_ERROR(drv.MemMap(va + c.offset, c.bytes, 0, h, 0));
    m->mapped_.emplace_back(c.offset, c.bytes);
    KVTIER_RETURN_IF_DRIVER_ERROR(drv.MemSetAccess(va + c.offset, c.bytes, &access, 1));
  }
  return m;
}

GpuPoolMapping::~GpuPoolMapping() {
  if (!base_) return;
  if (kind_ == GpuPoolExport::Kind::kLegacyIpc) {
    IgnoreCudaError(cudaIpcCloseMemHandle(base_));
    return;
  }
  const CudaDriverApi& drv = **CudaDriver();
  for (const auto& [offset, bytes] : mapped_) (void)drv.MemUnmap(Ptr(base_) + offset, bytes);
  for (CUmemGenericAllocationHandle h : handles_) (void)drv.MemRelease(h);
  (void)drv.MemAddressFree(Ptr(base_), reserved_bytes_);
}

}  // namespace kvtier
