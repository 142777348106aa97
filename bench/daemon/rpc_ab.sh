#!/usr/bin/env bash
# A/B run of rpc_bench against two kvtierd binaries, interleaved (A B A B ...) on fresh daemons so that
# both see the same machine load. Prints one JSON line per run, tagged with its binary.
#   bench/daemon/rpc_ab.sh A_KVTIERD B_KVTIERD RPC_BENCH [rounds=3] [workers=8] [seconds=3]
set -euo pipefail
a=$1; b=$2; bench=$3; rounds=${4:-3}; workers=${5:-8}; seconds=${6:-3}
dir=$(mktemp -d /tmp/kvtier-rpc-ab.XXXXXX)
trap 'rm -rf "$dir"' EXIT
for ((r = 0; r < rounds; r++)); do
  for tag in A B; do
    bin=$a; [[ $tag == B ]] && bin=$b
    rm -f "$dir/k.sock"
    "$bin" --socket_path="$dir/k.sock" --limits.gpu_pool_bytes=34359738368 --limits.host_tier_bytes=1073741824 \
      >"$dir/d.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do [[ -S $dir/k.sock ]] && break; sleep 0.05; done
    out=$("$bench" --socket="$dir/k.sock" --workers="$workers" --seconds="$seconds" | grep '"workers"')
    # The daemon's CPU time over its life (user + system clock ticks): its cost per request, which does
    # not depend on how busy the rest of the machine is.
    ticks=$(awk '{print $14 + $15}' /proc/$pid/stat)
    kill -TERM "$pid"; wait "$pid" || true
    echo "{\"binary\": \"$tag\", \"round\": $r, \"load1\": $(cut -d' ' -f1 /proc/loadavg), \"daemon_cpu_s\": $(echo "$ticks / $(getconf CLK_TCK)" | bc -l | awk "{printf \"%.3f\", \$1}"), \"run\": ${out%,}}"
  done
done
