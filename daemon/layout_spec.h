// Turns a wire LayoutSpec (shape, dtype, precision policy) into the tiering LayoutSpec: validates every
// field and resolves the policy into per-segment codecs for the resident and offload geometries.
#pragma once

#include "absl/status/statusor.h"
#include "kvtier/v1/kvtier.pb.h"
#include "tiering/layout.h"

namespace kvtier {

// `fallback` is the daemon's default policy, used for every part the request leaves unset.
absl::StatusOr<LayoutSpec> ToLayoutSpec(const kvtier::v1::LayoutSpec& wire,
                                        const kvtier::v1::PrecisionPolicy& fallback);

// The precision policy of a config or request, validated (layout-independent checks).
absl::StatusOr<PrecisionPolicy> ToPrecisionPolicy(const kvtier::v1::PrecisionPolicy& wire);

// A codec from its config form (format name, grouping name, group size) for K or V.
absl::StatusOr<SegmentCodec> ToSegmentCodec(const kvtier::v1::CodecSpec& spec, Operand op);

}  // namespace kvtier
