// The host device: GPU-tier pages live in anonymous host memory and are converted by the CPU
// transcode path of kernels/.
#include <fcntl.h>
#include <cerrno>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/attention/attention.h"
#include "kernels/static_transcode.h"
#include "kernels/transcode.h"
#include "tiering/device_backend.h"
#include "tiering/kernel_status.h"
#include "tiering/sync.h"
#include "absl/container/flat_hash_map.h"

namespace kvtier {
namespace {

class HostDeviceBackend final : public DeviceBackend {
 public:
  explicit HostDeviceBackend(int threads) : threads_(threads < 1 ? 1 : threads) {}

  std::string name() const override { return "host"; }
  bool is_gpu() const override { return false; }

  absl::StatusOr<std::unique_ptr<PageArena>> CreateArena(const Layout& layout, int32_t num_slots) override {
    const uint64_t data_bytes = layout.resident.page_bytes() * static_cast<uint64_t>(num_slots);
    const uint64_t param_bytes = uint64_t{layout.resident.param_bytes()} * static_cast<uint64_t>(num_slots);
    const uint64_t total = data_bytes + param_bytes;
    if (num_slots <= 0 || total == 0) return absl::InvalidArgumentError("arena with no slots");
    // A memfd, so that engines can map the same pages (ExportPool); sparse: slots that are never written
    // cost no memory.
    const int fd = memfd_create("kvtier-arena", MFD_CLOEXEC);
    if (fd < 0) return absl::ResourceExhaustedError(absl::StrCat("memfd_create failed: errno ", errno));
    if (ftruncate(fd, static_cast<off_t>(total)) != 0) {
      close(fd);
      return absl::ResourceExhaustedError(absl::StrCat("ftruncate of the arena memfd to ", total, " bytes failed"));
    }
    void* mem = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (mem == MAP_FAILED) {
      close(fd);
      return absl::ResourceExhaustedError(absl::StrCat("mmap of ", total, " bytes failed"));
    }
    auto* base = static_cast<uint8_t*>(mem);
    {
      MutexLock lock(&mu_);
      memfds_[base] = {fd, total};
    }
    return std::make_unique<PageArena>(base, param_bytes ? base + data_bytes : nullptr, layout.resident.page_bytes(),
                                       layout.resident.param_bytes(), num_slots, [this, mem, total, fd, base] {
                                         {
                                           MutexLock lock(&mu_);
                                           memfds_.erase(base);
                                         }
                                         munmap(mem, total);
                                         close(fd);
                                       });
  }

  absl::StatusOr<PoolExport> ExportPool(const PageArena& arena) const override {
    MutexLock lock(&mu_);
    auto it = memfds_.find(arena.data());
    if (it == memfds_.end()) return absl::FailedPreconditionError("not an arena of this host device");
    const int fd = fcntl(it->second.first, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return absl::ResourceExhaustedError(absl::StrCat("dup of the arena memfd failed: errno ", errno));
    PoolExport e;
    e.kind = PoolExport::Kind::kHostMemfd;
    e.reserved_bytes = it->second.second;
    e.chunks.push_back({0, it->second.second, fd});
    e.params_offset = arena.params() ? static_cast<uint64_t>(arena.params() - arena.data()) : 0;
    return e;
  }

  absl::Status WriteActivations(const Layout& layout, PageArena& arena, std::span<const int32_t> slots,
                                std::span<const uint8_t* const> src) override {
    std::vector<PageView> in;
    for (const uint8_t* p : src) in.push_back({p, nullptr});
    return Run(layout.activation_geometry, in, layout.resident, ArenaPages(arena, slots));
  }

  absl::Status ReadActivations(const Layout& layout, const PageArena& arena, std::span<const int32_t> slots,
                               std::span<uint8_t* const> dst) override {
    std::vector<MutablePageView> out;
    for (uint8_t* p : dst) out.push_back({p, nullptr});
    return Run(layout.resident, ArenaViews(arena, slots), layout.activation_geometry, out);
  }

  absl::Status PageOut(const Layout& layout, const PageGeometry& offload, const PageArena& arena,
                       std::span<const int32_t> slots, std::span<uint8_t* const> records) override {
    std::vector<MutablePageView> out;
    for (uint8_t* r : records) out.push_back({r, r + offload.page_bytes()});
    if (layout.static_plan && HasStaticSegments(offload)) {
      if (slots.size() != out.size()) return absl::InvalidArgumentError("page batch size mismatch");
      uint64_t clipped = 0;
      const absl::Status st = ToStatus(TranscodePagesStaticCpu(layout.resident, ArenaViews(arena, slots), offload, out,
                                                               layout.static_plan->table, &clipped, threads_));
      if (!st.ok()) return st;
      layout.static_plan->clipped.fetch_add(clipped, std::memory_order_relaxed);
      return absl::OkStatus();
    }
    return Run(layout.resident, ArenaViews(arena, slots), offload, out);
  }

  absl::Status PageIn(const Layout& layout, const PageGeometry& offload, PageArena& arena,
                      std::span<const int32_t> slots, std::span<const uint8_t* const> records) override {
    std::vector<PageView> in;
    for (const uint8_t* r : records) in.push_back({r, r + offload.page_bytes()});
    if (layout.static_plan && HasStaticSegments(offload)) {
      if (slots.size() != in.size()) return absl::InvalidArgumentError("page batch size mismatch");
      return ToStatus(TranscodePagesStaticCpu(offload, in, layout.resident, ArenaPages(arena, slots),
                                              layout.static_plan->table, nullptr, threads_));
    }
    return Run(offload, in, layout.resident, ArenaPages(arena, slots));
  }

  absl::Status Attend(const Layout& layout, const PageArena& arena, const AttendBatch& b) override {
    const PagedKvPool pool{arena.data(), arena.params(), arena.num_slots()};
    const PagedKvBatch batch{static_cast<int32_t>(b.seq_lens.size()), b.seq_lens.data(), b.block_table.data(),
                             b.block_table_stride};
    const ActDtype dtype = layout.activation == Format::kBf16 ? ActDtype::kBf16 : ActDtype::kFp16;
    if (b.IsDecode()) {
      DecodeParams p{&layout.resident, pool, batch, b.layer, b.num_q_heads, layout.shape.head_dim, dtype,
                     b.q, b.out, b.sm_scale};
      return ToStatus(PagedDecodeCpu(p, threads_));
    }
    ExtendParams p{&layout.resident, pool, batch, b.q_indptr.data(), b.layer, b.num_q_heads,
                   layout.shape.head_dim, dtype, b.q, b.out, b.sm_scale};
    return ToStatus(PagedExtendCpu(p, threads_));
  }

 private:
  static std::vector<PageView> ArenaViews(const PageArena& arena, std::span<const int32_t> slots) {
    std::vector<PageView> v;
    for (int32_t s : slots) v.push_back({arena.page(s), arena.page_params(s)});
    return v;
  }
  static std::vector<MutablePageView> ArenaPages(PageArena& arena, std::span<const int32_t> slots) {
    std::vector<MutablePageView> v;
    for (int32_t s : slots) v.push_back({arena.page(s), arena.page_params(s)});
    return v;
  }
  absl::Status Run(const PageGeometry& src, const std::vector<PageView>& in, const PageGeometry& dst,
                   const std::vector<MutablePageView>& out) {
    if (in.size() != out.size()) return absl::InvalidArgumentError("page batch size mismatch");
    return ToStatus(TranscodePagesCpu(src, in, dst, out, threads_));
  }

  int threads_;
  mutable Mutex mu_;
  absl::flat_hash_map<const uint8_t*, std::pair<int, uint64_t>> memfds_ ABSL_GUARDED_BY(mu_);  // base -> (fd, bytes)
};

}  // namespace

bool AttendBatch::IsDecode() const {
  for (size_t i = 0; i + 1 < q_indptr.size(); ++i)
    if (q_indptr[i + 1] - q_indptr[i] != 1) return false;
  return true;
}

void ClosePoolExport(PoolExport& e) {
  for (auto& c : e.chunks) {
    if (c.fd >= 0) close(c.fd);
    c.fd = -1;
  }
}

std::unique_ptr<DeviceBackend> MakeHostDeviceBackend(int threads) {
  return std::make_unique<HostDeviceBackend>(threads);
}

}  // namespace kvtier
