// Helpers shared by the SSD-tier tests: a per-test temp directory and self-verifying records (every
// byte is derived from the key, so a misrouted, stale or torn record is detected wherever it surfaces).
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tiering/block_key.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier::ssd_test {

inline uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline BlockKey KeyFor(uint64_t i) {
  uint64_t s = i * 7919 + 1;
  return BlockKey{SplitMix(s), SplitMix(s)};
}

// Payload bytes from the key. `compressible`: 4 bits of entropy per byte (like small int8 codes), which
// zstd shrinks ~2x; otherwise full-entropy bytes that do not compress.
inline std::string PayloadFor(const BlockKey& key, size_t size, bool compressible = false) {
  std::string p(size, '\0');
  uint64_t s = key.lo ^ (key.hi * 31) ^ size;
  size_t i = 0;
  while (i < size) {
    uint64_t r = SplitMix(s);
    for (int b = 0; b < 8 && i < size; ++b, ++i, r >>= 8) {
      p[i] = static_cast<char>(compressible ? (r & 0x0f) : (r & 0xff));
    }
  }
  return p;
}

inline std::string MetadataFor(const BlockKey& key) { return "layout=7;parent=" + key.ToHex() + ";scales=0.5"; }

// Checks that a record is exactly what PayloadFor/MetadataFor produce for its key and size.
inline bool RecordIsIntact(const SsdRecord& r, bool compressible = false) {
  return r.metadata == MetadataFor(r.key) && r.payload == PayloadFor(r.key, r.payload.size(), compressible);
}

// A temporary directory made in SetUp and removed in TearDown.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvtier_ssd_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  SsdTierOptions SmallOptions() const {
    SsdTierOptions o;
    o.dir = dir_;
    o.capacity_bytes = 16 << 20;
    o.slab_bytes = 4 << 20;
    o.queue_depth = 8;
    o.io_block_bytes = 256 << 10;
    o.io_timeout = absl::Seconds(10);
    o.compression = SsdCompression::kOff;
    o.min_free_fraction = 0;  // the tests must not depend on how full the host's disk is
    o.log = [](std::string_view) {};
    return o;
  }

  std::string dir_;
};

// Puts records KeyFor(first .. first+count-1) of `size` bytes; returns the statuses.
inline std::vector<absl::Status> PutRange(SsdTier& tier, uint64_t first, int count, size_t size,
                                          bool compressible = false) {
  std::vector<std::string> payloads, metas;
  std::vector<SsdPutItem> items;
  for (int i = 0; i < count; ++i) {
    const BlockKey k = KeyFor(first + i);
    payloads.push_back(PayloadFor(k, size, compressible));
    metas.push_back(MetadataFor(k));
  }
  for (int i = 0; i < count; ++i) items.push_back(SsdPutItem{KeyFor(first + i), metas[i], payloads[i]});
  return tier.Put(items);
}

}  // namespace kvtier::ssd_test
