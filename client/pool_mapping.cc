#include "client/pool_mapping.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

#if KVTIER_WITH_CUDA
#include "tiering/gpu_pool.h"
#endif

namespace kvtier {

#if !KVTIER_WITH_CUDA
class GpuPoolMapping {};  // built without CUDA: only host pools can be mapped
#endif

absl::StatusOr<std::unique_ptr<MappedPool>> MappedPool::Map(const v1::GetPoolHandleResponse& h,
                                                          const std::vector<int>& fds) {
  std::unique_ptr<MappedPool> m(new MappedPool());
  m->kind_ = h.kind();
  m->device_ = h.device();
  m->num_slots_ = h.num_slots();
  m->params_offset_ = h.params_offset();
  m->dtype_ = h.layout().dtype() == v1::ACTIVATION_DTYPE_BF16 ? ActDtype::kBf16 : ActDtype::kFp16;
  // The resident geometry, rebuilt from the codecs the daemon resolved for the layout.
  const LayoutShape shape{h.layout().num_layers(), h.layout().num_kv_heads(), h.layout().head_dim(),
                          h.layout().block_size()};
  if (!ValidateShape(shape).ok()) return absl::InvalidArgumentError("pool handle with an invalid layout shape");
  const int64_t segments = int64_t{shape.num_layers} * 2 * shape.num_kv_heads;
  if (h.resident_codecs_size() != segments)
    return absl::InvalidArgumentError(absl::StrCat("pool handle has ", h.resident_codecs_size(), " codecs for ",
                                                   segments, " segments"));
  auto geometry = PageGeometry::Create(shape, [&](int layer, Operand op, int head) {
    const auto& c = h.resident_codecs(PageGeometry::SegmentIndex(shape, layer, op, head));
    return SegmentCodec{static_cast<Format>(c.format()), static_cast<Grouping>(c.grouping()),
                        static_cast<uint16_t>(c.group_size())};
  });
  if (!geometry.ok()) return absl::InvalidArgumentError("pool handle with an invalid resident geometry");
  m->geometry_ = std::move(*geometry);
  if (m->geometry_.page_bytes() != h.page_bytes() || m->geometry_.param_bytes() != h.param_bytes())
    return absl::InvalidArgumentError("pool handle's page sizes disagree with its geometry");
  const uint64_t needed = h.params_offset() + uint64_t{h.param_bytes()} * static_cast<uint64_t>(h.num_slots());
  if (h.num_slots() <= 0 || h.reserved_bytes() < needed ||
      h.reserved_bytes() < uint64_t{h.page_bytes()} * static_cast<uint64_t>(h.num_slots()))
    return absl::InvalidArgumentError("pool handle's slots do not fit its range");
  if (static_cast<size_t>(h.chunks_size()) != fds.size())
    return absl::InvalidArgumentError(absl::StrCat(fds.size(), " descriptors for ", h.chunks_size(), " chunks"));

  switch (h.kind()) {
    case v1::POOL_KIND_HOST_MEMFD: {
      if (fds.size() != 1) return absl::InvalidArgumentError("a host pool comes as one memfd");
      void* p = mmap(nullptr, h.reserved_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
      if (p == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap of the pool: ", std::strerror(errno)));
      m->base_ = static_cast<uint8_t*>(p);
      m->mapped_bytes_ = h.reserved_bytes();
      return m;
    }
    case v1::POOL_KIND_CUDA_VMM:
    case v1::POOL_KIND_CUDA_IPC: {
#if KVTIER_WITH_CUDA
      GpuPoolExport e;
      e.kind = h.kind() == v1::POOL_KIND_CUDA_VMM ? GpuPoolExport::Kind::kVmmPosixFd : GpuPoolExport::Kind::kLegacyIpc;
      e.device = h.device();
      e.reserved_bytes = h.reserved_bytes();
      e.granularity = h.granularity();
      for (int i = 0; i < h.chunks_size(); ++i)
        e.chunks.push_back({h.chunks(i).offset(), h.chunks(i).bytes(), fds[i]});
      if (e.kind == GpuPoolExport::Kind::kLegacyIpc) {
        if (h.cuda_ipc_handle().size() != sizeof(e.ipc)) return absl::InvalidArgumentError("bad CUDA IPC handle");
        std::memcpy(&e.ipc, h.cuda_ipc_handle().data(), sizeof(e.ipc));
      }
      auto mapping = GpuPoolMapping::Import(e);  // does not take the descriptors
      if (!mapping.ok()) return mapping.status();
      m->gpu_ = std::move(*mapping);
      m->base_ = m->gpu_->base();
      return m;
#else
      return absl::FailedPreconditionError("this client library was built without CUDA: cannot map a GPU pool");
#endif
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown pool kind ", h.kind()));
  }
}

MappedPool::~MappedPool() {
  if (kind_ == v1::POOL_KIND_HOST_MEMFD && base_ != nullptr) munmap(base_, mapped_bytes_);
  // A GPU mapping unmaps itself (gpu_).
}

}  // namespace kvtier
