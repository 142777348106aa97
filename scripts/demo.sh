#!/usr/bin/env bash
# The kvtier demo: installs what is missing, builds, starts kvtierd on its built-in default configuration
# (GPU when present, otherwise the host-memory device), runs two engine-worker processes against it —
# the second reusing the first one's prompt prefix across a page-out to the host tier and a page-in
# back — prints what happened, and shuts the daemon down cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
KVTIER_SETUP_PYTHON=0 bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target kvtierd kvtierctl kvtier-demo-worker

bin=build/release
log=$(mktemp /tmp/kvtierd-demo.XXXXXX.log)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting kvtierd (built-in defaults; log: $log)"
"$bin/daemon/kvtierd" 2>"$log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$bin/client/kvtierctl" status >/dev/null 2>&1 && break
  sleep 0.1
done
grep -E ' (device|listening) ' "$log" | sed 's/^/  kvtierd: /'

say "worker A: writes the KV of a 1000-token prompt (62 full blocks + a private 8-token tail) and commits it"
"$bin/client/kvtier-demo-worker" --role=writer --tokens=1000 --name=worker-A

say "operator: page A's blocks out of the GPU tier (fp16 -> int8 K per-channel / V per-token, into host memory)"
"$bin/client/kvtierctl" evict
"$bin/client/kvtierctl" status

say "worker B: same 1000-token prefix + 200 tokens of its own; looks it up (pin + page-in), verifies every block, prefills the rest"
"$bin/client/kvtier-demo-worker" --role=reader --tokens=1000 --extra=200 --name=worker-B

say "what happened"
"$bin/client/kvtierctl" status

say "stopping kvtierd (SIGTERM)"
kill -TERM $daemon
wait $daemon
trap - EXIT
grep -E ' (signal|shutdown) ' "$log" | sed 's/^/  kvtierd: /'
echo "demo: ok"
