// Crash test in the style of RocksDB's db_crashtest: a writer process (ssd_crash_writer) puts and
// removes records continuously and is killed with SIGKILL at a random moment, several rounds over the
// same directory. After every kill the tier is reopened (with full verification) and must be
// consistent: every record whose Put was acknowledged and that was not (possibly) removed is present and
// intact, every indexed record verifies (no torn or partial record is ever served), and the space in use
// is exactly what the index references (orphans of the crash were reclaimed).
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"
#include "tests/tiering/ssd_crash_common.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/record_format.h"

namespace kvtier {
namespace {

class SsdCrashTest : public ssd_test::TempDirTest {
 protected:
  // Runs the writer for about `run_for`, kills it, and returns what it reported.
  void RunAndKill(uint64_t seed, bool compress, SsdDurability durability, absl::Duration run_for) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const std::string seed_arg = std::to_string(seed), fd_arg = std::to_string(fds[1]);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      execl(SSD_CRASH_WRITER, SSD_CRASH_WRITER, dir_.c_str(), seed_arg.c_str(), fd_arg.c_str(), compress ? "on" : "off",
            durability == SsdDurability::kPowerLoss ? "power_loss" : "process_crash", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    // The clock starts at the writer's first acknowledged Put, so that the kill lands among writes and
    // not in start-up (which takes most of the time in sanitizer builds).
    absl::Time kill_at = absl::Now() + absl::Seconds(30);
    bool armed = false;
    std::string log;
    bool killed = false;
    for (;;) {
      const int wait_ms = killed ? 1000 : std::max<int>(0, absl::ToInt64Milliseconds(kill_at - absl::Now()));
      pollfd p{fds[0], POLLIN, 0};
      poll(&p, 1, std::min(wait_ms, 20));
      char buf[4096];
      const ssize_t n = (p.revents & (POLLIN | POLLHUP)) ? read(fds[0], buf, sizeof(buf)) : -1;
      if (n > 0) log.append(buf, n);
      if (n == 0) break;  // writer gone and pipe drained
      if (!armed && log.size() >= 8) {
        armed = true;
        kill_at = absl::Now() + run_for;
      }
      if (!killed && absl::Now() >= kill_at) {
        kill(pid, SIGKILL);
        killed = true;
      }
    }
    close(fds[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the writer exited on its own (status " << status << ") before the kill";
    for (size_t i = 0; i + 8 <= log.size(); i += 8) {
      uint64_t w;
      std::memcpy(&w, log.data() + i, 8);
      if (w & ssd_crash::kRemovedBit) {
        maybe_removed_.insert(w & ~ssd_crash::kRemovedBit);
      } else {
        acked_.insert(w);
      }
    }
  }

  absl::flat_hash_set<uint64_t> acked_, maybe_removed_;
};

TEST_F(SsdCrashTest, KillDuringWritesNeverLosesAcknowledgedRecordsOrServesTornOnes) {
  std::mt19937_64 rng(20261123);
  constexpr int kRounds = 6;
  uint64_t total_acked = 0;
  for (int round = 1; round <= kRounds; ++round) {
    const absl::Duration run_for = absl::Milliseconds(150 + rng() % 350);
    // Rounds cover zstd off/on and both durability modes (kill -9 must lose nothing acknowledged in either).
    const SsdDurability durability = (round / 2) % 2 ? SsdDurability::kPowerLoss : SsdDurability::kProcessCrash;
    ASSERT_NO_FATAL_FAILURE(RunAndKill(round, round % 2 == 0, durability, run_for));

    SsdTierOptions o = ssd_crash::Options(dir_);
    o.recovery_check = SsdTierOptions::RecoveryCheck::kFull;
    auto tier = SsdTier::Open(o);
    ASSERT_TRUE(tier.ok()) << tier.status();

    // Every acknowledged record not removed since is present and intact.
    std::vector<BlockKey> want;
    std::vector<uint64_t> want_ids;
    for (uint64_t id : acked_) {
      if (maybe_removed_.contains(id)) continue;
      want.push_back(ssd_test::KeyFor(id));
      want_ids.push_back(id);
    }
    auto got = (*tier)->Get(want);
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_TRUE(got[i].ok()) << "round " << round << " lost acknowledged record " << want_ids[i] << ": "
                               << got[i].status();
      EXPECT_EQ(got[i]->payload.size(), ssd_crash::SizeFor(want_ids[i]));
      EXPECT_TRUE(ssd_test::RecordIsIntact(*got[i], true)) << "record " << want_ids[i];
    }

    // Everything indexed verifies, and the space in use is exactly what the index references.
    auto list = (*tier)->ListEntries();
    ASSERT_TRUE(list.ok()) << list.status();
    std::vector<BlockKey> listed;
    uint64_t referenced = 0;
    for (const SsdEntryInfo& e : *list) {
      listed.push_back(e.key);
      referenced += e.extent_bytes;
    }
    for (const auto& r : (*tier)->Get(listed)) {
      ASSERT_TRUE(r.ok()) << "round " << round << ": an indexed record does not verify: " << r.status();
      EXPECT_TRUE(ssd_test::RecordIsIntact(*r, true));
    }
    const SsdTierStats st = (*tier)->Stats();
    EXPECT_EQ(st.used_bytes, referenced);
    EXPECT_EQ(st.records, list->size());
    EXPECT_EQ(st.checksum_failures, 0u);
    total_acked = acked_.size();
    std::printf("round=%d run_ms=%lld acked=%zu maybe_removed=%zu indexed=%zu recovery_drops=%llu used=%llu\n", round,
                static_cast<long long>(absl::ToInt64Milliseconds(run_for)), acked_.size(), maybe_removed_.size(),
                list->size(), static_cast<unsigned long long>(st.recovery_drops),
                static_cast<unsigned long long>(st.used_bytes));
  }
  // The rounds did real work: many acknowledged writes, and the tier filled and reused space.
  // (Bounds low enough for sanitizer builds, which write ~10x slower.)
  EXPECT_GT(total_acked, 50u);
  EXPECT_GT(maybe_removed_.size(), 5u);
}

}  // namespace
}  // namespace kvtier
