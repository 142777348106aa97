#!/usr/bin/env bash
# The kvtier test suite on a machine without a GPU (GPU-labelled tests skip visibly): installs what is
# missing, builds, runs every test in the release build, then the unit/integration/e2e tests again under
# ASan+UBSan and the concurrent ones under TSan.
#   KVTIER_TEST_SANITIZERS=0  only the release build
#   KVTIER_TEST_FUZZ=0        skip the clang/libFuzzer stage (runs after TSan; KVTIER_FUZZ_SECONDS, default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)
start=$(date +%s)

echo "== release build"
cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs"
ctest --preset release -j "$jobs"

if [ "${KVTIER_TEST_SANITIZERS:-1}" = "1" ]; then
  echo "== ASan + UBSan"
  cmake --preset asan >/dev/null
  cmake --build --preset asan -j "$jobs"
  ctest --preset asan -j "$jobs" -LE 'gpu|slow'

  echo "== TSan (concurrent paths)"
  cmake --preset tsan >/dev/null
  cmake --build --preset tsan -j "$jobs"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ctest --preset tsan -j "$jobs" -L 'tsan'

  if [ "${KVTIER_TEST_FUZZ:-1}" = "1" ]; then
    echo "== libFuzzer over the request handlers (clang, ASan+UBSan, ${KVTIER_FUZZ_SECONDS:-60} s)"
    cmake --preset fuzz -DKVTIER_FUZZ_SECONDS="${KVTIER_FUZZ_SECONDS:-60}" >/dev/null
    cmake --build --preset fuzz -j "$jobs" --target daemon_request_fuzz
    ctest --preset fuzz
  fi
fi
echo "== all tests passed in $(( $(date +%s) - start )) s"
