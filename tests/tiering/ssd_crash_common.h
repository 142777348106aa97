// What ssd_crash_test and its victim process (ssd_crash_writer) agree on.
#pragma once

#include <cstdint>
#include <string>

#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier::ssd_crash {

inline constexpr uint64_t kIdsPerRound = 1'000'000;
inline constexpr uint64_t kRemovedBit = 1ull << 63;

// Record payload size for an id: 10 KB .. 600 KB, so records straddle I/O blocks and batches mix sizes.
inline size_t SizeFor(uint64_t id) {
  uint64_t s = id ^ 0xabcdef;
  return 10000 + ssd_test::SplitMix(s) % 590000;
}

inline SsdTierOptions Options(const std::string& dir) {
  SsdTierOptions o;
  o.dir = dir;
  o.capacity_bytes = 24 << 20;
  o.slab_bytes = 4 << 20;
  o.queue_depth = 8;
  o.io_block_bytes = 128 << 10;
  o.io_timeout = absl::Seconds(20);
  o.log = [](std::string_view) {};
  return o;
}

}  // namespace kvtier::ssd_crash
