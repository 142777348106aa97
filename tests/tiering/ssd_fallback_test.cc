// Where io_uring is forbidden (a seccomp profile, io_uring_disabled, an old kernel), SsdTier falls back
// to the pread/pwrite backend, says so in its log, and works the same. The test forbids io_uring_setup
// with a seccomp filter in a child process (no root needed) and runs the tier there.
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string>

#include "gtest/gtest.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier {
namespace {

// Makes io_uring_setup fail with ENOSYS in this process.
bool ForbidIoUring() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

// Runs in the child; the exit code says which check failed.
int RunWithoutIoUring(const std::string& dir) {
  if (!ForbidIoUring()) return 10;
  std::string log;
  SsdTierOptions o;
  o.dir = dir;
  o.capacity_bytes = 8 << 20;
  o.slab_bytes = 4 << 20;
  o.io_block_bytes = 128 << 10;
  o.log = [&log](std::string_view line) { log.append(line).append("\n"); };
  auto tier = SsdTier::Open(o);
  if (!tier.ok()) return 11;
  if ((*tier)->backend_name() != "threads") return 12;
  if (log.find("ssd_io_fallback backend=threads") == std::string::npos) return 13;
  for (const absl::Status& s : ssd_test::PutRange(**tier, 0, 4, 100000)) {
    if (!s.ok()) return 14;
  }
  std::vector<BlockKey> keys;
  for (int i = 0; i < 4; ++i) keys.push_back(ssd_test::KeyFor(i));
  for (const auto& r : (*tier)->Get(keys)) {
    if (!r.ok() || !ssd_test::RecordIsIntact(*r)) return 15;
  }
  return 0;
}

class SsdFallbackTest : public ssd_test::TempDirTest {};

TEST_F(SsdFallbackTest, FallsBackToThreadsWhenIoUringIsForbiddenAndSaysSo) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(RunWithoutIoUring(dir_));
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "check " << WEXITSTATUS(status) << " failed in the child";
  // The records written without io_uring are read back with it.
  SsdTierOptions o;
  o.dir = dir_;
  o.capacity_bytes = 8 << 20;
  o.slab_bytes = 4 << 20;
  o.log = [](std::string_view) {};
  auto tier = SsdTier::Open(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  EXPECT_EQ((*tier)->Stats().records, 4u);
}

}  // namespace
}  // namespace kvtier
