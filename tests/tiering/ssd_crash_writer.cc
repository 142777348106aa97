// The victim process of ssd_crash_test: opens the SSD tier in argv[1] and writes (and sometimes removes)
// self-verifying records forever, reporting on file descriptor argv[3] every record id whose Put
// returned OK (as a little-endian u64) and, before it removes one, the id with the top bit set. The test
// kills it with SIGKILL at a random moment and checks the tier against that log.
//
//   ssd_crash_writer DIR SEED FD COMPRESSION(off|on)
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <vector>

#include "tests/tiering/ssd_crash_common.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/ssd_tier.h"

namespace {

bool Report(int fd, uint64_t word) {
  const char* p = reinterpret_cast<const char*>(&word);
  size_t left = sizeof(word);
  while (left > 0) {
    const ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    left -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvtier;
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s DIR SEED FD off|on process_crash|power_loss\n", argv[0]);
    return 2;
  }
  const uint64_t seed = std::strtoull(argv[2], nullptr, 10);
  const int fd = std::atoi(argv[3]);
  SsdTierOptions o = ssd_crash::Options(argv[1]);
  o.compression = std::string(argv[4]) == "on" ? SsdCompression::kOn : SsdCompression::kOff;
  o.durability = std::string(argv[5]) == "power_loss" ? SsdDurability::kPowerLoss : SsdDurability::kProcessCrash;
  auto tier = SsdTier::Open(o);
  if (!tier.ok()) {
    std::fprintf(stderr, "open: %s\n", std::string(tier.status().message()).c_str());
    return 1;
  }
  uint64_t rng = seed;
  uint64_t next_id = seed * ssd_crash::kIdsPerRound;
  std::deque<uint64_t> live;
  for (;;) {
    const int n = 1 + static_cast<int>(ssd_test::SplitMix(rng) % 6);
    std::vector<uint64_t> ids;
    std::vector<std::string> payloads, metas;
    for (int i = 0; i < n; ++i) {
      ids.push_back(next_id++);
      const BlockKey k = ssd_test::KeyFor(ids.back());
      payloads.push_back(ssd_test::PayloadFor(k, ssd_crash::SizeFor(ids.back()), true));
      metas.push_back(ssd_test::MetadataFor(k));
    }
    std::vector<SsdPutItem> items;
    for (int i = 0; i < n; ++i) items.push_back(SsdPutItem{ssd_test::KeyFor(ids[i]), metas[i], payloads[i]});
    std::vector<absl::Status> st = (*tier)->Put(items);
    bool full = false;
    for (int i = 0; i < n; ++i) {
      if (st[i].ok()) {
        if (!Report(fd, ids[i])) return 1;
        live.push_back(ids[i]);
      } else if (st[i].code() == absl::StatusCode::kResourceExhausted) {
        full = true;
      } else {
        std::fprintf(stderr, "put: %s\n", std::string(st[i].message()).c_str());
        return 1;
      }
    }
    // Make room when full, and now and then anyway, so that space is reused under the crash.
    if (full || ssd_test::SplitMix(rng) % 8 == 0) {
      std::vector<BlockKey> gone;
      for (int i = 0; i < 6 && !live.empty(); ++i) {
        if (!Report(fd, live.front() | ssd_crash::kRemovedBit)) return 1;
        gone.push_back(ssd_test::KeyFor(live.front()));
        live.pop_front();
      }
      if (!(*tier)->Remove(gone).ok()) return 1;
    }
  }
}
