#include "tiering/cuda_device_backend.h"

#include <cuda_runtime_api.h>

#include <array>
#include <cstring>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/attention_cuda.h"
#include "kernels/cuda/static_transcode_cuda.h"
#include "kernels/cuda/transcode_cuda.h"
#include "kernels/static_transcode.h"
#include "tiering/cuda_call.h"
#include "tiering/cuda_driver.h"
#include "tiering/cuda_resources.h"
#include "tiering/gpu_pool.h"
#include "tiering/sync.h"

namespace kvtier {
namespace {

// Identifies a geometry by everything a transcode plan depends on (shape, codecs and placements).
uint64_t GeometryHash(const PageGeometry& g) {
  const LayoutShape& s = g.shape();
  uint64_t h = absl::HashOf(s.num_layers, s.num_kv_heads, s.head_dim, s.block_size, g.page_bytes(), g.param_bytes());
  for (int i = 0; i < g.num_segments(); ++i) {
    const SegmentPlacement& p = g.segment(i);
    h = absl::HashOf(h, p.codec.format, p.codec.grouping, p.codec.group_size, p.data_offset, p.param_offset);
  }
  return h;
}

// Bytes of one host-side page: data followed by its parameters (activation pages have none).
uint64_t HostUnit(const PageGeometry& g) { return g.page_bytes() + g.param_bytes(); }

// One of a lane's two staging buffers: chunk k of a batch uses buffer k % 2, so that chunk k+1's kernel
// (page-out) or copy (page-in) overlaps chunk k's copy or kernel.
struct Staging {
  DeviceBytes pages;       // compact host-format pages: page i at i * unit
  PinnedBytes host_pages;  // the same layout, for host pages not in pinned memory
  DeviceBytes slots;       // uint32_t[slot_capacity]
  PinnedBytes host_slots;
  CudaEvent kernel_done;  // recorded on the compute stream after the chunk's kernel
  CudaEvent copy_done;    // recorded on the copy stream after the chunk's page copies
};

// A direction's streams and staging. The mutex is held for a whole call.
struct Lane {
  Mutex mu;
  CudaStream compute ABSL_GUARDED_BY(mu);  // slot uploads (page-out) and kernels
  CudaStream copy ABSL_GUARDED_BY(mu);     // page copies (and slot uploads for page-in)
  Staging buf[2] ABSL_GUARDED_BY(mu);
  uint64_t staging_capacity ABSL_GUARDED_BY(mu) = 0;  // bytes per buffer
  uint32_t slot_capacity ABSL_GUARDED_BY(mu) = 0;
};

// Daemon-served attention's stream, created on first use.
struct AttendLane {
  Mutex mu;
  CudaStream stream ABSL_GUARDED_BY(mu);
};

absl::Status InitLane(Lane& lane) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lane.mu) {
  for (CudaStream* s : {&lane.compute, &lane.copy}) {
    auto created = CreateStream();
    if (!created.ok()) return created.status();
    *s = std::move(*created);
  }
  for (Staging& b : lane.buf) {
    for (CudaEvent* e : {&b.kernel_done, &b.copy_done}) {
      auto created = CreateEvent();
      if (!created.ok()) return created.status();
      *e = std::move(*created);
    }
  }
  return absl::OkStatus();
}

// Grows both buffers to `bytes` of pages and `pages` slot ids. Only between calls (nothing in flight).
absl::Status Reserve(Lane& lane, uint64_t bytes, uint32_t pages) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lane.mu) {
  if (bytes > lane.staging_capacity) {
    lane.staging_capacity = 0;
    for (Staging& b : lane.buf) {
      b.pages.reset();
      b.host_pages.reset();
      auto dev = AllocateDevice(bytes);
      if (!dev.ok()) return dev.status();
      auto host = AllocatePinned(bytes);
      if (!host.ok()) return host.status();
      b.pages = std::move(*dev);
      b.host_pages = std::move(*host);
    }
    lane.staging_capacity = bytes;
  }
  if (pages > lane.slot_capacity) {
    lane.slot_capacity = 0;
    for (Staging& b : lane.buf) {
      b.slots.reset();
      b.host_slots.reset();
      auto dev = AllocateDevice(pages * sizeof(uint32_t));
      if (!dev.ok()) return dev.status();
      auto host = AllocatePinned(pages * sizeof(uint32_t));
      if (!host.ok()) return host.status();
      b.slots = std::move(*dev);
      b.host_slots = std::move(*host);
    }
    lane.slot_capacity = pages;
  }
  return absl::OkStatus();
}

// The page-locked host allocation (one cudaHostAlloc or cudaHostRegister range) that holds a page.
struct PinnedAllocation {
  const uint8_t* begin = nullptr;
  const uint8_t* end = nullptr;
  bool Holds(const uint8_t* p, uint64_t bytes) const { return p >= begin && p + bytes <= end; }
};

// The pinned allocation that holds all of [p, p + bytes), or nullopt when the range is pageable memory
// or not entirely in one allocation. Without the driver's range query, the range alone (no merging).
std::optional<PinnedAllocation> PinnedAllocationOf(const uint8_t* p, uint64_t bytes) {
  cudaPointerAttributes attr{};
  if (!CudaCall(cudaPointerGetAttributes(&attr, p), "cudaPointerGetAttributes").ok() ||
      attr.type != cudaMemoryTypeHost)
    return std::nullopt;
  auto api = CudaDriver();
  CUdeviceptr start = 0;
  size_t size = 0;
  const auto at = reinterpret_cast<CUdeviceptr>(p);
  if (!api.ok() || (*api)->PointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, at) != CUDA_SUCCESS ||
      (*api)->PointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, at) != CUDA_SUCCESS) {
    cudaPointerAttributes last{};
    if (!CudaCall(cudaPointerGetAttributes(&last, p + bytes - 1), "cudaPointerGetAttributes").ok() ||
        last.type != cudaMemoryTypeHost)
      return std::nullopt;
    return PinnedAllocation{p, p + bytes};
  }
  const PinnedAllocation a{reinterpret_cast<const uint8_t*>(start), reinterpret_cast<const uint8_t*>(start) + size};
  if (!a.Holds(p, bytes)) return std::nullopt;
  return a;
}

// Maximal runs of pages that one copy can move: pinned pages of one pinned allocation at a constant
// host stride (adjacent, or records of one size class of the pinned allocator, whose 4 KiB rounding
// leaves gaps: a 2D copy), or unpinned pages (one copy through host staging, where they are adjacent by
// construction). A run never crosses from one pinned allocation into another, even when their addresses
// happen to line up: the driver rejects such a copy (1D or 2D) with cudaErrorInvalidValue (seen on the
// H100 and H200 as 5% of reads failing under the GPU stress).
struct CopyRun {
  size_t first = 0, count = 0;
  bool pinned = false;
  uint64_t host_stride = 0;       // pinned runs: bytes from one page to the next in host memory
  PinnedAllocation allocation{};  // pinned runs: where all of the run's pages lie
};

// Strides up to this are copied as one 2D copy (far below any device's maximum pitch).
constexpr uint64_t kMaxHostStride = 1ull << 30;

template <class Ptr>
std::vector<CopyRun> PlanCopies(std::span<Ptr const> pages, uint64_t unit) {
  std::vector<CopyRun> runs;
  for (size_t i = 0; i < pages.size(); ++i) {
    const uint8_t* here = pages[i];
    CopyRun* r = runs.empty() ? nullptr : &runs.back();
    // A page inside the previous run's pinned allocation is pinned (no query), and may extend the run.
    if (r != nullptr && r->pinned && r->allocation.Holds(here, unit)) {
      const uint8_t* first = pages[r->first];
      if (r->count == 1 && here >= first + unit && here - first <= static_cast<ptrdiff_t>(kMaxHostStride)) {
        r->host_stride = static_cast<uint64_t>(here - first);
        ++r->count;
        continue;
      }
      if (r->count > 1 && here == first + r->count * r->host_stride) {
        ++r->count;
        continue;
      }
      runs.push_back({i, 1, true, unit, r->allocation});
      continue;
    }
    const std::optional<PinnedAllocation> pinned = PinnedAllocationOf(here, unit);
    if (!pinned && r != nullptr && !r->pinned) {
      ++r->count;
      continue;
    }
    runs.push_back({i, 1, pinned.has_value(), unit, pinned.value_or(PinnedAllocation{})});
  }
  return runs;
}

// Enqueues the copy of one run between the compact device staging (page i at i * unit) and host memory
// (`host` = the run's first page, then every run.host_stride bytes; unit for staging).
absl::Status CopyRunAsync(const CopyRun& r, uint8_t* staging, const uint8_t* host, uint64_t unit, cudaMemcpyKind kind,
                          cudaStream_t stream) {
  uint8_t* dev = staging + r.first * unit;
  const uint64_t stride = r.pinned ? r.host_stride : unit;
  if (stride == unit) {
    void* dst = kind == cudaMemcpyHostToDevice ? static_cast<void*>(dev) : const_cast<uint8_t*>(host);
    const void* src = kind == cudaMemcpyHostToDevice ? static_cast<const void*>(host) : dev;
    return CudaCall(cudaMemcpyAsync(dst, src, r.count * unit, kind, stream), "cudaMemcpyAsync(pages)");
  }
  if (kind == cudaMemcpyHostToDevice)
    return CudaCall(cudaMemcpy2DAsync(dev, unit, host, stride, unit, r.count, kind, stream),
                    "cudaMemcpy2DAsync(pages)");
  return CudaCall(cudaMemcpy2DAsync(const_cast<uint8_t*>(host), stride, dev, unit, unit, r.count, kind, stream),
                  "cudaMemcpy2DAsync(pages)");
}

class CudaDeviceBackend final : public DeviceBackend {
 public:
  CudaDeviceBackend(int device, std::string name, CudaDeviceBackendOptions options)
      : device_(device), name_(std::move(name)), options_(options) {}

  absl::Status Init() {
    for (Lane* lane : {&to_device_, &to_host_}) {
      MutexLock lock(&lane->mu);
      KVTIER_RETURN_IF_ERROR(InitLane(*lane));
    }
    return absl::OkStatus();
  }

  std::string name() const override { return name_; }
  bool is_gpu() const override { return true; }

  absl::StatusOr<std::unique_ptr<PageArena>> CreateArena(const Layout& layout, int32_t num_slots) override {
    if (num_slots <= 0) return absl::InvalidArgumentError("arena with no slots");
    KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
    // Unsupported geometries fail here rather than on the first write.
    for (auto [src, dst] : {std::pair(&layout.activation_geometry, &layout.resident),
                            std::pair(&layout.resident, &layout.activation_geometry)}) {
      auto plan = Plan(*src, *dst);
      if (!plan.ok()) return plan.status();
    }
    const uint64_t page = layout.resident.page_bytes(), param = layout.resident.param_bytes();
    const uint64_t data_bytes = page * static_cast<uint64_t>(num_slots);
    auto pool = GpuPool::Create(device_, data_bytes + param * static_cast<uint64_t>(num_slots));
    if (!pool.ok()) return pool.status();
    std::shared_ptr<GpuPool> shared = std::move(*pool);
    uint8_t* base = shared->base();
    {
      MutexLock lock(&pools_mu_);
      pools_[base] = shared;
    }
    return std::make_unique<PageArena>(base, param ? base + data_bytes : nullptr, page, param, num_slots, [this, base] {
      MutexLock lock(&pools_mu_);
      pools_.erase(base);
    });
  }

  absl::Status PrepareSlots(const PageArena& arena, std::span<const int32_t> slots) override {
    return CheckBatch(arena, slots, slots.size(), /*commit=*/true).status();
  }

  absl::Status WriteActivations(const Layout& layout, PageArena& arena, std::span<const int32_t> slots,
                                std::span<const uint8_t* const> src) override {
    return ToDevice(layout.activation_geometry, layout.resident, arena, slots, src);
  }
  absl::Status ReadActivations(const Layout& layout, const PageArena& arena, std::span<const int32_t> slots,
                               std::span<uint8_t* const> dst) override {
    return ToHost(layout.resident, layout.activation_geometry, arena, slots, dst);
  }
  absl::Status PageOut(const Layout& layout, const PageGeometry& offload, const PageArena& arena,
                       std::span<const int32_t> slots, std::span<uint8_t* const> records) override {
    if (layout.static_plan && HasStaticSegments(offload)) {
      KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
      auto plan = StaticPlan(layout, layout.resident, offload);
      if (!plan.ok()) return plan.status();
      StaticEntry* e = *plan;
      KVTIER_RETURN_IF_ERROR(ToHost(
          [e](const DevicePageSet& in, const DevicePageSet& out, uint32_t n, cudaStream_t stream) {
            return e->plan.Launch(in, out, n, reinterpret_cast<unsigned long long*>(e->clipped.get()), stream);
          },
          offload, arena, slots, records));
      return ReportClipped(layout, *e);
    }
    return ToHost(layout.resident, offload, arena, slots, records);
  }
  absl::Status PageIn(const Layout& layout, const PageGeometry& offload, PageArena& arena,
                      std::span<const int32_t> slots, std::span<const uint8_t* const> records) override {
    if (layout.static_plan && HasStaticSegments(offload)) {
      KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
      auto plan = StaticPlan(layout, offload, layout.resident);
      if (!plan.ok()) return plan.status();
      StaticEntry* e = *plan;
      return ToDevice(
          [e](const DevicePageSet& in, const DevicePageSet& out, uint32_t n, cudaStream_t stream) {
            return e->plan.Launch(in, out, n, nullptr, stream);
          },
          offload, arena, slots, records);
    }
    return ToDevice(offload, layout.resident, arena, slots, records);
  }

  absl::StatusOr<GpuPoolExport> Export(const PageArena& arena) const {
    std::shared_ptr<GpuPool> pool = FindPool(arena);
    if (!pool) return absl::FailedPreconditionError("not an arena of this CUDA device backend");
    return pool->Export();
  }

  absl::StatusOr<PoolExport> ExportPool(const PageArena& arena) const override {
    auto g = Export(arena);
    if (!g.ok()) return g.status();
    PoolExport e;
    e.kind = g->kind == GpuPoolExport::Kind::kVmmPosixFd ? PoolExport::Kind::kCudaVmm : PoolExport::Kind::kCudaIpc;
    e.device = g->device;
    e.reserved_bytes = g->reserved_bytes;
    e.granularity = g->granularity;
    for (const auto& c : g->chunks) e.chunks.push_back({c.offset, c.bytes, c.fd});  // the fds move over
    if (e.kind == PoolExport::Kind::kCudaIpc)
      e.ipc_handle.assign(reinterpret_cast<const char*>(&g->ipc), sizeof(g->ipc));
    e.params_offset = arena.params() ? static_cast<uint64_t>(arena.params() - arena.data()) : 0;
    return e;
  }

 private:
  // Launches one chunk's conversion between a page set on the device and the compact staging.
  using LaunchFn = std::function<KernelStatus(const DevicePageSet& in, const DevicePageSet& out, uint32_t num_pages,
                                              cudaStream_t stream)>;
  static LaunchFn PlanLauncher(const CudaTranscodePlan* plan) {
    return [plan](const DevicePageSet& in, const DevicePageSet& out, uint32_t n, cudaStream_t stream) {
      return plan->Launch(in, out, n, stream);
    };
  }

  // Static-scale transcodes (docs/calibration.md): one plan per (layout, direction), with the device
  // counter of values clipped by its launches and how much of it was already reported.
  struct StaticEntry {
    CudaStaticTranscode plan;
    DeviceBytes clipped;  // unsigned long long, only ever incremented
    Mutex mu;
    uint64_t reported ABSL_GUARDED_BY(mu) = 0;
  };
  absl::StatusOr<StaticEntry*> StaticPlan(const Layout& layout, const PageGeometry& src, const PageGeometry& dst) {
    const std::tuple<uint64_t, uint64_t, uint64_t> key(layout.id, GeometryHash(src), GeometryHash(dst));
    MutexLock lock(&plans_mu_);
    auto it = static_plans_.find(key);
    if (it != static_plans_.end()) return it->second.get();
    auto plan = CudaStaticTranscode::Create(src, dst, layout.static_plan->table);  // on the current device
    if (!plan.ok()) return ToStatus(plan.status());
    auto counter = AllocateDevice(sizeof(unsigned long long));
    if (!counter.ok()) return counter.status();
    KVTIER_RETURN_IF_CUDA_ERROR(cudaMemset(counter->get(), 0, sizeof(unsigned long long)));
    auto owned = std::unique_ptr<StaticEntry>(new StaticEntry{std::move(*plan), std::move(*counter), {}, 0});
    StaticEntry* out = owned.get();
    static_plans_.emplace(key, std::move(owned));
    return out;
  }
  // Adds what the entry's counter gained since the last report to the layout's clip count.
  static absl::Status ReportClipped(const Layout& layout, StaticEntry& e) {
    unsigned long long now = 0;
    KVTIER_RETURN_IF_CUDA_ERROR(cudaMemcpy(&now, e.clipped.get(), sizeof now, cudaMemcpyDeviceToHost));
    MutexLock lock(&e.mu);
    if (now > e.reported) {
      layout.static_plan->clipped.fetch_add(now - e.reported, std::memory_order_relaxed);
      e.reported = now;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<const CudaTranscodePlan*> Plan(const PageGeometry& src, const PageGeometry& dst) {
    const std::pair<uint64_t, uint64_t> key(GeometryHash(src), GeometryHash(dst));
    MutexLock lock(&plans_mu_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second.get();
    auto plan = CudaTranscodePlan::Create(src, dst);  // on the current device: callers set it
    if (!plan.ok()) return ToStatus(plan.status());
    auto owned = std::make_unique<CudaTranscodePlan>(std::move(*plan));
    const CudaTranscodePlan* out = owned.get();
    plans_.emplace(key, std::move(owned));
    return out;
  }

  std::shared_ptr<GpuPool> FindPool(const PageArena& arena) const {
    MutexLock lock(&pools_mu_);
    auto it = pools_.find(arena.data());
    return it == pools_.end() ? nullptr : it->second;
  }

  // The byte ranges of `slot` in its pool: data, then its parameter record.
  static std::array<std::pair<uint64_t, uint64_t>, 2> SlotRanges(const PageArena& arena, int32_t slot) {
    const uint64_t s = static_cast<uint64_t>(slot);
    const uint64_t params_at = arena.page_bytes() * static_cast<uint64_t>(arena.num_slots());
    return {std::pair(s * arena.page_bytes(), arena.page_bytes()),
            std::pair(params_at + s * arena.param_bytes(), uint64_t{arena.param_bytes()})};
  }

  // Validates a batch; with `commit`, backs its slots with memory, otherwise requires that they are.
  absl::StatusOr<std::shared_ptr<GpuPool>> CheckBatch(const PageArena& arena, std::span<const int32_t> slots,
                                                      size_t num_pages, bool commit) const {
    if (slots.size() != num_pages) return absl::InvalidArgumentError("page batch size mismatch");
    std::shared_ptr<GpuPool> pool = FindPool(arena);
    if (!pool) return absl::FailedPreconditionError("not an arena of this CUDA device backend");
    for (int32_t s : slots) {
      if (s < 0 || s >= arena.num_slots()) return absl::OutOfRangeError(absl::StrCat("slot ", s, " out of range"));
      for (auto [offset, len] : SlotRanges(arena, s)) {
        if (commit) {
          absl::Status st = pool->Commit(offset, len);
          if (!st.ok()) return st;
        } else if (!pool->IsCommitted(offset, len)) {
          return absl::FailedPreconditionError(absl::StrCat("slot ", s, " was never written"));
        }
      }
    }
    return pool;
  }

  static DevicePageSet PoolSet(const PageArena& arena, const uint8_t* device_slots) {
    return {arena.data(), arena.page_bytes(), arena.params(), arena.param_bytes(),
            reinterpret_cast<const uint32_t*>(device_slots)};
  }
  static DevicePageSet StagingSet(uint8_t* staging, const PageGeometry& g) {
    return {staging, HostUnit(g), g.param_bytes() ? staging + g.page_bytes() : nullptr, HostUnit(g), nullptr};
  }

  // Pages per chunk: what one of the two staging buffers holds, at most options_.chunk_pages.
  uint32_t PagesPerChunk(const PageGeometry& host, size_t num_pages) const {
    const uint64_t fit = std::max<uint64_t>(1, options_.staging_bytes / 2 / HostUnit(host));
    const uint64_t cap = std::max<uint32_t>(1, options_.chunk_pages);
    return static_cast<uint32_t>(std::min<uint64_t>({fit, cap, num_pages}));
  }

  // Enqueues the H2D copy of a chunk's slot ids into the buffer's device slot array.
  static absl::Status UploadSlots(Staging& b, std::span<const int32_t> slots, cudaStream_t stream) {
    auto* host = reinterpret_cast<uint32_t*>(b.host_slots.get());
    for (size_t i = 0; i < slots.size(); ++i) host[i] = static_cast<uint32_t>(slots[i]);
    return CudaCall(
        cudaMemcpyAsync(b.slots.get(), host, slots.size() * sizeof(uint32_t), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync(slots)");
  }

  // Waits for everything a call enqueued on the lane; the first error of `st` and the waits.
  static absl::Status Finish(Lane& lane, absl::Status st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lane.mu) {
    absl::Status compute = CudaCall(cudaStreamSynchronize(lane.compute.get()), "cudaStreamSynchronize(compute)");
    absl::Status copy = CudaCall(cudaStreamSynchronize(lane.copy.get()), "cudaStreamSynchronize(copy)");
    if (!st.ok()) return st;
    return compute.ok() ? copy : compute;
  }

  // Host pages (`src` geometry) -> resident pages at `slots` (`dst` geometry). Chunk k: copy stream
  // uploads pages and slots into buffer k % 2, the compute stream waits for that and transcodes; buffer
  // b is refilled only after the kernel that read it (chunk k - 2) has completed.
  absl::Status ToDevice(const PageGeometry& src, const PageGeometry& dst, PageArena& arena,
                        std::span<const int32_t> slots, std::span<const uint8_t* const> pages) {
    KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
    auto plan = Plan(src, dst);
    if (!plan.ok()) return plan.status();
    return ToDevice(PlanLauncher(*plan), src, arena, slots, pages);
  }
  absl::Status ToDevice(const LaunchFn& launch, const PageGeometry& src, PageArena& arena,
                        std::span<const int32_t> slots, std::span<const uint8_t* const> pages) {
    KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
    auto pool = CheckBatch(arena, slots, pages.size(), /*commit=*/true);
    if (!pool.ok()) return pool.status();
    const uint64_t unit = HostUnit(src);
    const uint32_t chunk = PagesPerChunk(src, pages.size());
    MutexLock lock(&to_device_.mu);
    Lane& lane = to_device_;
    KVTIER_RETURN_IF_ERROR(Reserve(lane, chunk * unit, chunk));
    absl::Status st;
    size_t k = 0;
    for (size_t first = 0; first < pages.size() && st.ok(); first += chunk, ++k) {
      const size_t n = std::min<size_t>(chunk, pages.size() - first);
      Staging& b = lane.buf[k % 2];
      if (k >= 2) {
        st = CudaCall(cudaEventSynchronize(b.kernel_done.get()), "cudaEventSynchronize(kernel_done)");
        if (!st.ok()) break;
      }
      st = ToDeviceChunk(launch, src, arena, slots.subspan(first, n), pages.subspan(first, n), lane, b);
    }
    return Finish(lane, st);
  }

  absl::Status ToDeviceChunk(const LaunchFn& launch, const PageGeometry& src, PageArena& arena,
                             std::span<const int32_t> slots, std::span<const uint8_t* const> pages, Lane& lane,
                             Staging& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lane.mu) {
    const uint64_t unit = HostUnit(src);
    for (const CopyRun& r : PlanCopies(pages, unit)) {
      const uint8_t* from = pages[r.first];
      if (!r.pinned) {
        for (size_t i = r.first; i < r.first + r.count; ++i) std::memcpy(b.host_pages.get() + i * unit, pages[i], unit);
        from = b.host_pages.get() + r.first * unit;
      }
      KVTIER_RETURN_IF_ERROR(CopyRunAsync(r, b.pages.get(), from, unit, cudaMemcpyHostToDevice, lane.copy.get()));
    }
    KVTIER_RETURN_IF_ERROR(UploadSlots(b, slots, lane.copy.get()));
    KVTIER_RETURN_IF_CUDA_ERROR(cudaEventRecord(b.copy_done.get(), lane.copy.get()));
    KVTIER_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(lane.compute.get(), b.copy_done.get(), 0));
    KVTIER_RETURN_IF_ERROR(ToStatus(launch(StagingSet(b.pages.get(), src), PoolSet(arena, b.slots.get()),
                                                static_cast<uint32_t>(pages.size()), lane.compute.get())));
    return CudaCall(cudaEventRecord(b.kernel_done.get(), lane.compute.get()), "cudaEventRecord(kernel_done)");
  }

  // Resident pages at `slots` (`src` geometry) -> host pages (`dst` geometry). Chunk k: the compute
  // stream uploads slots and transcodes into buffer k % 2, the copy stream waits for that and copies out;
  // buffer b is reused only after chunk k - 2's copies have completed (and its unpinned pages were
  // copied to their destinations).
  absl::Status ToHost(const PageGeometry& src, const PageGeometry& dst, const PageArena& arena,
                      std::span<const int32_t> slots, std::span<uint8_t* const> pages) {
    KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
    auto plan = Plan(src, dst);
    if (!plan.ok()) return plan.status();
    return ToHost(PlanLauncher(*plan), dst, arena, slots, pages);
  }
  absl::Status ToHost(const LaunchFn& launch, const PageGeometry& dst, const PageArena& arena,
                      std::span<const int32_t> slots, std::span<uint8_t* const> pages) {
    KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
    auto pool = CheckBatch(arena, slots, pages.size(), /*commit=*/false);
    if (!pool.ok()) return pool.status();
    const uint64_t unit = HostUnit(dst);
    const uint32_t chunk = PagesPerChunk(dst, pages.size());
    MutexLock lock(&to_host_.mu);
    Lane& lane = to_host_;
    KVTIER_RETURN_IF_ERROR(Reserve(lane, chunk * unit, chunk));
    struct Pending {
      std::vector<CopyRun> runs;
      size_t first = 0;
      bool active = false;
    } pending[2];
    // Copies a finished chunk's unpinned pages from host staging to their destinations.
    auto deliver = [&](Pending& p, const Staging& b) {
      for (const CopyRun& r : p.runs) {
        if (r.pinned) continue;
        for (size_t i = r.first; i < r.first + r.count; ++i)
          std::memcpy(pages[p.first + i], b.host_pages.get() + i * unit, unit);
      }
      p.active = false;
    };
    absl::Status st;
    size_t k = 0;
    for (size_t first = 0; first < pages.size() && st.ok(); first += chunk, ++k) {
      const size_t n = std::min<size_t>(chunk, pages.size() - first);
      Staging& b = lane.buf[k % 2];
      Pending& p = pending[k % 2];
      if (p.active) {
        st = CudaCall(cudaEventSynchronize(b.copy_done.get()), "cudaEventSynchronize(copy_done)");
        if (!st.ok()) break;
        deliver(p, b);
      }
      p.first = first;
      p.active = true;
      st = ToHostChunk(launch, dst, arena, slots.subspan(first, n), pages.subspan(first, n), lane, b, p.runs);
    }
    st = Finish(lane, st);
    if (!st.ok()) return st;
    for (int i = 0; i < 2; ++i)
      if (pending[i].active) deliver(pending[i], lane.buf[i]);
    return absl::OkStatus();
  }

  absl::Status ToHostChunk(const LaunchFn& launch, const PageGeometry& dst, const PageArena& arena,
                           std::span<const int32_t> slots, std::span<uint8_t* const> pages, Lane& lane, Staging& b,
                           std::vector<CopyRun>& runs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lane.mu) {
    const uint64_t unit = HostUnit(dst);
    runs.clear();
    KVTIER_RETURN_IF_ERROR(UploadSlots(b, slots, lane.compute.get()));
    KVTIER_RETURN_IF_ERROR(ToStatus(launch(PoolSet(arena, b.slots.get()), StagingSet(b.pages.get(), dst),
                                                static_cast<uint32_t>(pages.size()), lane.compute.get())));
    KVTIER_RETURN_IF_CUDA_ERROR(cudaEventRecord(b.kernel_done.get(), lane.compute.get()));
    KVTIER_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(lane.copy.get(), b.kernel_done.get(), 0));
    runs = PlanCopies(pages, unit);
    for (const CopyRun& r : runs) {
      const uint8_t* to = r.pinned ? pages[r.first] : b.host_pages.get() + r.first * unit;
      KVTIER_RETURN_IF_ERROR(CopyRunAsync(r, b.pages.get(), to, unit, cudaMemcpyDeviceToHost, lane.copy.get()));
    }
    return CudaCall(cudaEventRecord(b.copy_done.get(), lane.copy.get()), "cudaEventRecord(copy_done)");
  }

  // Daemon-served attention: q and the block table up, one launch, out back down, on its own stream.
  // Buffers are per call (Attend over gRPC is the slow path; engines launch in-process instead).
  absl::Status Attend(const Layout& layout, const PageArena& arena, const AttendBatch& b) override {
    MutexLock lock(&attend_.mu);
    if (!attend_.stream) {
      auto st = CreateStream();
      if (!st.ok()) return st.status();
      attend_.stream = std::move(*st);
    }
    cudaStream_t stream = attend_.stream.get();
    const int hd = layout.shape.head_dim;
    const uint64_t qo_bytes = static_cast<uint64_t>(b.q_indptr.back()) * b.num_q_heads * hd * 2;
    auto upload = [&](const void* src, uint64_t bytes) -> absl::StatusOr<DeviceBytes> {
      auto d = AllocateDevice(std::max<uint64_t>(bytes, 16));
      if (!d.ok()) return d.status();
      KVTIER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(d->get(), src, bytes, cudaMemcpyHostToDevice, stream));
      return d;
    };
    auto q = upload(b.q, qo_bytes);
    auto table = upload(b.block_table.data(), b.block_table.size() * sizeof(int32_t));
    auto lens = upload(b.seq_lens.data(), b.seq_lens.size() * sizeof(int32_t));
    auto indptr = upload(b.q_indptr.data(), b.q_indptr.size() * sizeof(int32_t));
    auto out = AllocateDevice(std::max<uint64_t>(qo_bytes, 16));
    for (const absl::Status& st : {q.status(), table.status(), lens.status(), indptr.status(), out.status()})
      if (!st.ok()) return st;
    const PagedKvPool pool{arena.data(), arena.params(), arena.num_slots()};
    const PagedKvBatch batch{static_cast<int32_t>(b.seq_lens.size()), b.seq_lens.data(), b.block_table.data(),
                             b.block_table_stride};
    const ActDtype dtype = layout.activation == Format::kBf16 ? ActDtype::kBf16 : ActDtype::kFp16;
    CudaLaunch launch;
    launch.device = {reinterpret_cast<const int32_t*>(lens->get()), reinterpret_cast<const int32_t*>(table->get()),
                     reinterpret_cast<const int32_t*>(indptr->get())};
    launch.stream = stream;
    DeviceBytes workspace;
    KernelStatus ks;
    if (b.IsDecode()) {
      const DecodeParams p{&layout.resident, pool, batch, b.layer, b.num_q_heads, hd, dtype, q->get(), out->get(),
                           b.sm_scale};
      auto plan = PlanDecodeCuda(p);
      if (!plan.ok()) return ToStatus(plan.status());
      if (plan->workspace_bytes > 0) {
        auto ws = AllocateDevice(plan->workspace_bytes);
        if (!ws.ok()) return ws.status();
        workspace = std::move(*ws);
      }
      launch.workspace = workspace.get();
      launch.workspace_bytes = plan->workspace_bytes;
      ks = PagedDecodeCuda(p, launch);
    } else {
      const ExtendParams p{&layout.resident, pool, batch, b.q_indptr.data(), b.layer, b.num_q_heads, hd, dtype,
                           q->get(), out->get(), b.sm_scale};
      ks = PagedExtendCuda(p, launch);
    }
    // Wait for everything queued (uploads included) before the buffers go, also on errors.
    const absl::Status launched = ToStatus(ks);
    if (launched.ok())
      KVTIER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(b.out, out->get(), qo_bytes, cudaMemcpyDeviceToHost, stream));
    const absl::Status synced = CudaCall(cudaStreamSynchronize(stream), "cudaStreamSynchronize(attend)");
    return launched.ok() ? synced : launched;
  }

  const int device_;
  const std::string name_;
  const CudaDeviceBackendOptions options_;
  Mutex plans_mu_;
  absl::flat_hash_map<std::pair<uint64_t, uint64_t>, std::unique_ptr<CudaTranscodePlan>> plans_
      ABSL_GUARDED_BY(plans_mu_);
  absl::flat_hash_map<std::tuple<uint64_t, uint64_t, uint64_t>, std::unique_ptr<StaticEntry>> static_plans_
      ABSL_GUARDED_BY(plans_mu_);
  mutable Mutex pools_mu_;
  absl::flat_hash_map<const uint8_t*, std::shared_ptr<GpuPool>> pools_ ABSL_GUARDED_BY(pools_mu_);
  Lane to_device_;     // WriteActivations, PageIn
  Lane to_host_;       // ReadActivations, PageOut
  AttendLane attend_;  // Attend
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceBackend>> MakeCudaDeviceBackend(int device, CudaDeviceBackendOptions options) {
  KVTIER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
  cudaDeviceProp prop{};
  KVTIER_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device));
  auto backend = std::make_unique<CudaDeviceBackend>(device, absl::StrCat("cuda:", device, " ", prop.name), options);
  absl::Status st = backend->Init();
  if (!st.ok()) return st;
  return backend;
}

absl::StatusOr<GpuPoolExport> ExportArena(const DeviceBackend& device, const PageArena& arena) {
  const auto* cuda = dynamic_cast<const CudaDeviceBackend*>(&device);
  if (!cuda) return absl::FailedPreconditionError("not a CUDA device backend");
  return cuda->Export(arena);
}

}  // namespace kvtier
