// The baseline the SSD tier is measured against: a plain sequential O_DIRECT io_uring loop over one
// file with the same queue depth, block size and registered buffers the tier uses, no index, no
// checksums, no copies. Write time includes the final fdatasync.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kvtier::bench {

struct RawResult {
  uint64_t bytes = 0;
  double seconds = 0;
};

absl::StatusOr<RawResult> RawUringSequential(const std::string& path, uint64_t bytes, uint32_t block, int queue_depth,
                                             bool write);

}  // namespace kvtier::bench
