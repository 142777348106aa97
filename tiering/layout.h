// Layout: a registered model shape with its three page geometries —
//   activation: what engines write and read (fp16 or bf16 everywhere, no parameters),
//   resident:   the GPU-pool format (per the precision policy),
//   offload:    the host/SSD format (per the precision policy).
// Layouts are immutable once registered; their id is a stable hash of the normalized spec, so that two
// workers registering the same model share blocks, and a restarted daemon recognizes its SSD records.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "tiering/sync.h"
#include "kernels/format.h"
#include "kernels/page_geometry.h"

namespace kvtier {

struct LayoutSpec {
  LayoutShape shape;
  Format activation = Format::kFp16;  // fp16 or bf16
  PageGeometry::CodecFn resident;     // (layer, op, head) -> codec of GPU-resident pages
  PageGeometry::CodecFn offload;      // (layer, op, head) -> codec of host/SSD pages
  std::string policy_fingerprint;     // canonical text of the policy, part of the layout id
  std::string model_name;
};

struct Layout {
  uint64_t id = 0;
  LayoutShape shape;
  Format activation = Format::kFp16;
  PageGeometry activation_geometry;
  PageGeometry resident;
  PageGeometry offload;
  std::string model_name;

  // Bytes of one block in the host/SSD tiers: offload data followed by its parameter record.
  uint64_t offload_record_bytes() const { return offload.page_bytes() + offload.param_bytes(); }
};

// Thread-safe registry of layouts by id. Layout objects live as long as the registry.
class LayoutRegistry {
 public:
  // Validates the spec and returns the registered layout (the existing one if the spec is identical).
  absl::StatusOr<const Layout*> Register(const LayoutSpec& spec);
  // Null when unknown.
  const Layout* Find(uint64_t id) const;
  size_t size() const;

 private:
  mutable Mutex mu_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Layout>> layouts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
