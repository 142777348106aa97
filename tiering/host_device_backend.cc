// The host device: GPU-tier pages live in anonymous host memory and are converted by the CPU
// transcode path of kernels/.
#include <sys/mman.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/attention/attention.h"
#include "kernels/static_transcode.h"
#include "kernels/transcode.h"
#include "tiering/device_backend.h"
#include "tiering/kernel_status.h"

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
    // MAP_NORESERVE: slots that are never written cost no memory.
    void* mem = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap of ", total, " bytes failed"));
    auto* base = static_cast<uint8_t*>(mem);
    return std::make_unique<PageArena>(base, param_bytes ? base + data_bytes : nullptr, layout.resident.page_bytes(),
                                       layout.resident.param_bytes(), num_slots,
                                       [mem, total] { munmap(mem, total); });
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
};

}  // namespace

bool AttendBatch::IsDecode() const {
  for (size_t i = 0; i + 1 < q_indptr.size(); ++i)
    if (q_indptr[i + 1] - q_indptr[i] != 1) return false;
  return true;
}

std::unique_ptr<DeviceBackend> MakeHostDeviceBackend(int threads) {
  return std::make_unique<HostDeviceBackend>(threads);
}

}  // namespace kvtier
