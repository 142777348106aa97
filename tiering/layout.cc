#include "tiering/layout.h"

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "tiering/kernel_status.h"

namespace kvtier {

absl::StatusOr<const Layout*> LayoutRegistry::Register(const LayoutSpec& spec) {
  if (spec.activation != Format::kFp16 && spec.activation != Format::kBf16)
    return absl::InvalidArgumentError("layout activation dtype must be fp16 or bf16");
  if (!spec.resident || !spec.offload) return absl::InvalidArgumentError("layout without a precision policy");
  auto act = PageGeometry::Uniform(spec.shape, DefaultCodec(spec.activation, Operand::kKey),
                                   DefaultCodec(spec.activation, Operand::kValue));
  if (!act.ok()) return ToStatus(act.status());
  auto resident = PageGeometry::Create(spec.shape, spec.resident);
  if (!resident.ok())
    return absl::InvalidArgumentError(absl::StrCat("resident policy: ", resident.status().message()));
  auto offload = PageGeometry::Create(spec.shape, spec.offload);
  if (!offload.ok()) return absl::InvalidArgumentError(absl::StrCat("offload policy: ", offload.status().message()));

  const std::string canonical =
      absl::StrCat("L", spec.shape.num_layers, "H", spec.shape.num_kv_heads, "D", spec.shape.head_dim, "T",
                   spec.shape.block_size, "A", static_cast<int>(spec.activation), "|", spec.policy_fingerprint);
  const uint64_t id = XXH3_64bits(canonical.data(), canonical.size()) | 1;  // never 0

  MutexLock lock(&mu_);
  auto it = layouts_.find(id);
  if (it != layouts_.end()) return it->second.get();
  auto layout = std::make_unique<Layout>(Layout{id, spec.shape, spec.activation, std::move(*act),
                                                std::move(*resident), std::move(*offload), spec.model_name});
  const Layout* out = layout.get();
  layouts_.emplace(id, std::move(layout));
  return out;
}

const Layout* LayoutRegistry::Find(uint64_t id) const {
  MutexLock lock(&mu_);
  auto it = layouts_.find(id);
  return it == layouts_.end() ? nullptr : it->second.get();
}

size_t LayoutRegistry::size() const {
  MutexLock lock(&mu_);
  return layouts_.size();
}

}  // namespace kvtier
