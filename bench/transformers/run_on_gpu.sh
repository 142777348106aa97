#!/usr/bin/env bash
# kvtier.transformers on the GPU machine: the transformers Cache tests with the model on the GPU and kvtierd
# on its CUDA backend (the pool data path maps the CUDA VMM pool), then the TTFT benchmark of issue 11.
#
# Here:   cmake --build --preset release --target kvtierd
#         /work/shared/tools/device-bundle .dev/ttft/bundle build/release/daemon/kvtierd
#         tar -cf - -C .dev/ttft bundle | xz > .dev/ttft/bundle.tar.xz; rm -r .dev/ttft/bundle
#         pip download --python-version 3.12 --only-binary=:all: --no-deps grpcio-tools==<device grpcio> \
#             -d .dev/ttft/whl                   (the device has grpcio and protobuf, not grpcio-tools)
#         cp build/release/kernels/libkvtier_kernels_capi.so .dev/ttft/   (the fast path's kernels)
# There:  STEPS="tests ttft" (or profile) bash bench/transformers/run_on_gpu.sh .dev/ttft     (results under $OUT)
# LENGTHS (default 4096,8192,16384,32768), REPEATS (3) and TESTS (unittest names) narrow a run down; ATTN
# (sdpa) picks the model's attention: sdpa over K/V gathered from the pool, or kvtier (the kernels on the pool).
set -uo pipefail
steps=" ${STEPS:-tests ttft} "
kit=$(cd "$1" && pwd)
out=${OUT:-/tmp/kvtier-ttft-out}
mkdir -p "$out"
work=$(mktemp -d /tmp/kvtier-ttft.XXXXXX)
tar -xJf "$kit/bundle.tar.xz" -C "$work"
python3 -m pip install -q --no-deps --target "$work/py" "$kit"/whl/*.whl
# kvtierd runs with the bundle's libraries in its own environment only, not in the Python process's.
cat >"$work/kvtierd" <<WRAP
#!/usr/bin/env bash
. "$work/bundle/env.sh"
exec "$work/bundle/bin/kvtierd" "\$@"
WRAP
chmod +x "$work/kvtierd"
repo=$(pwd)
export PYTHONPATH="$work/py:$repo/client/python" KVTIERD="$work/kvtierd" KVTIER_KERNELS_CAPI="$kit/libkvtier_kernels_capi.so"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"

if [[ $steps == *" tests "* ]]; then
  echo "== transformers Cache tests, model on the GPU, kvtierd on CUDA"
  read -ra names <<<"${TESTS:-transformers_cache_test}"
  (cd tests/transformers && KVTIER_TEST_DEVICE=cuda timeout 400 python3 -m unittest -v "${names[@]}") \
    >"$out/transformers_cache_gpu_test.log" 2>&1
  echo "rc=$?"; grep -E "^(test_|Ran |OK|FAILED)|Error|error" "$out/transformers_cache_gpu_test.log" | tail -30
fi

if [[ $steps == *" ttft "* ]]; then
  echo "== TTFT, Llama-3-8B architecture (random bf16 weights), attention ${ATTN:-sdpa}, pool data path"
  timeout 560 python3 bench/transformers/ttft.py --kvtierd "$work/kvtierd" --device cuda --model llama3-8b \
    --dtype bf16 --attn "${ATTN:-sdpa}" --data_path pool --lengths "${LENGTHS:-4096,8192,16384,32768}" \
    --repeats "${REPEATS:-3}" --decode_steps 16 --host_formats fp16,int8,fp4_e2m1 --ssd_formats int8,fp4_e2m1 \
    --out "$out/transformers_ttft_h100_${ATTN:-sdpa}.json" 2>&1 | tail -45
fi
if [[ $steps == *" profile "* ]]; then
  echo "== where a 32K-token GPU-tier hit spends its time (cProfile + torch.profiler)"
  timeout 300 python3 bench/transformers/profile_hit.py --kvtierd "$work/kvtierd" --device cuda --model llama3-8b \
    --dtype bf16 --attn "${ATTN:-kvtier}" --length "${LENGTH:-32768}" --out "$out/profile_hit_${ATTN:-kvtier}.txt" 2>&1 |
    head -60
fi
rm -rf "$work"
