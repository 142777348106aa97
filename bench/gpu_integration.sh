#!/usr/bin/env bash
# One device call on the GPU machine for a merged tree: every GPU-labelled test binary, the daemon tests
# that run with the CUDA backend there, a bounded GPU-tier stress with faults, and the CPU-side benchmarks
# that need a quiet machine (in-process lookup, RPC lookup latency, SSD tier vs raw io_uring).
#
# Here:   cmake --preset release && cmake --build --preset release
#         /work/shared/tools/device-bundle .dev/final/bundle <the binaries below> daemon/kvtierd ...
#         tar -cf - -C .dev/final bundle | xz > .dev/final/bundle.tar.xz
# There:  bash bench/gpu_integration.sh .dev/final/bundle.tar.xz      (results under $OUT)
# STEPS (default "tests lookup rpc stress ssd"), TESTS (the test binaries) and STRESS_S (60) narrow a run down.
set -uo pipefail
steps=" ${STEPS:-tests lookup rpc stress ssd} "
tests=${TESTS:-kernels_transcode_cuda_test kernels_attention_cuda_test kernels_static_transcode_cuda_test \
  tiering_cuda_device_backend_test tiering_cuda_static_scales_test daemon_service_test daemon_pool_test \
  e2e_pool_gpu_test}
archive=$1
out=${OUT:-/tmp/kvtier-gpu-out}
mkdir -p "$out"
work=$(mktemp -d /tmp/kvtier-gpu.XXXXXX)
tar -xJf "$archive" -C "$work"
# shellcheck source=/dev/null  # the bundle is unpacked at run time
. "$work/bundle/env.sh"
# Tests that start kvtierd take the bundled one from $KVTIERD (tests/e2e/process.h).
KVTIERD=$(command -v kvtierd)
export KVTIERD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"

if [[ $steps == *" tests "* ]]; then
  echo "== GPU tests"
  for t in $tests; do
    timeout 180 "$t" >"$out/$t.log" 2>&1
    echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/$t.log" | tr '\n' ' ')"
  done
fi

if [[ $steps == *" lookup "* ]]; then
  echo "== in-process lookup"
  timeout 120 lookup_bench --benchmark_min_time=0.5 --benchmark_out="$out/lookup_bench.json" \
    --benchmark_out_format=json 2>&1 | grep -E 'BM_' | tee "$out/lookup_bench.txt"
fi

if [[ $steps == *" rpc "* ]]; then
  # Interleaved A/B: kvtierd and rpc_bench with absl's deadlock detection off (their default) and on
  # (KVTIER_ABSL_DEADLOCK_DETECTION=1, the Debian abseil's default; client/absl_runtime.h).
  echo "== RPC lookup latency (kvtierd with the CUDA backend, 1, 8 and 32 workers)"
  sock=$work/k.sock
  for detect in 0 1 0 1; do
    rm -f "$sock"
    KVTIER_ABSL_DEADLOCK_DETECTION=$detect kvtierd --socket_path="$sock" --limits.gpu_pool_bytes=34359738368 \
      --limits.host_tier_bytes=1073741824 >"$out/rpc_kvtierd.log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
    KVTIER_ABSL_DEADLOCK_DETECTION=$detect timeout 90 rpc_bench --socket="$sock" --workers=1,8,32 --seconds=3 |
      grep '"workers"' | sed "s/^ *{/{\"absl_deadlock_detection\": $detect, /; s/},\?$/}/" | tee -a "$out/rpc_bench.jsonl"
    kill -TERM $pid; wait $pid
  done
fi

if [[ $steps == *" stress "* ]]; then
  echo "== GPU-tier stress with faults"
  timeout 150 kvtier-stress --mode=stress --kvtierd="$(command -v kvtierd)" --workers=8 --duration_s="${STRESS_S:-60}" \
    --gpu_min=67108864 --gpu_max=268435456 --host_min=134217728 --host_max=536870912 \
    --fault_spec="ssd_write:error:p=0.02;device_pagein:fail:p=0.02" --json="$out/gpu_stress.json" \
    >"$out/gpu_stress.log" 2>&1
  echo "stress rc=$?"; tail -5 "$out/gpu_stress.log"
fi

if [[ $steps == *" ssd "* ]]; then
  echo "== SSD tier vs raw io_uring"
  df -h /tmp | tail -1
  timeout 540 ssd_bench --dir="$work/ssd" --gib=1 --reps=3 --modes=off,auto --durability=process_crash,power_loss \
    --out="$out/ssd_bench.json" 2>&1 | grep -o '"zstd": "[a-z]*", "durability": "[a-z_]*"\|"content": "[a-z0-9]*"\|"write_vs_raw": [0-9.]*\|"getinto_read_vs_raw": [0-9.]*' |
    paste - - - - | tee "$out/ssd_bench.txt"
fi

rm -rf "$work"
