#!/usr/bin/env bash
# One attention measurement run on the GPU machine: GPU correctness tests, then bench_attention.py (torch
# SDPA, kvtier and, when the FlashInfer bundle is present, FlashInfer, in one process). FlashInfer's JIT
# modules compile in the background (fi_warm.py) while the tests and the kvtier part run.
# The folder of this script holds: libkvtier_kernels_capi.so, bench_attention.py, fi_warm.py, and
# optionally kernels_attention_cuda_test and fi/site.tar.xz (shared/tools/peer-flashinfer/bundle.sh).
# Usage: bench_attention.sh [bench_attention.py args...]; results go to $OUT (or ./out).
# NO_FI=1: without FlashInfer; FI_WARM="decode-fp16 decode-fp8": only those JIT modules (pass --no-fi-extend);
# NO_TESTS=1: skip the GPU tests.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
fi_flag=""
if [ -f "$here/fi/site.tar.xz" ] && [ -z "${NO_FI:-}" ]; then
  mkdir -p /tmp/site && tar -xJf "$here/fi/site.tar.xz" -C /tmp/site
  export PYTHONPATH=/tmp/site FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-/tmp/ficache}
  export FLASHINFER_DISABLE_VERSION_CHECK=1 MAX_JOBS=${MAX_JOBS:-6}
  marks=""
  for w in ${FI_WARM:-decode-fp16 decode-fp8 extend-fa3}; do
    rm -f "/tmp/fi_warm_$w.done"
    (python3 "$here/fi_warm.py" "$w" > "$out/fi_warm_$w.log" 2>&1; touch "/tmp/fi_warm_$w.done") &
    marks="$marks${marks:+,}/tmp/fi_warm_$w.done"
  done
  export FI_WARM_MARKERS=$marks
  fi_flag=--flashinfer
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
if [ -x "$here/kernels_attention_cuda_test" ] && [ -z "${NO_TESTS:-}" ]; then
  "$here/kernels_attention_cuda_test" > "$out/gpu_test.log" 2>&1
  echo "gpu tests rc=$?"; grep -E "^\[  (PASSED|FAILED) |FAILED|Failure|Expected|Which is" "$out/gpu_test.log" | head -40
fi
KVTIER_CAPI=$here/libkvtier_kernels_capi.so python3 "$here/bench_attention.py" $fi_flag "$@" 2>&1 | tee "$out/bench.log"
wait
