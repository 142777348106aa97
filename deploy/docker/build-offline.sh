#!/usr/bin/env bash
# Builds the kvtierd image without a Docker daemon or a registry: only a Debian mirror is needed.
# debootstrap makes the debian:bookworm base (also tagged bookworm-slim) in buildah's local store,
# `buildah bud` builds deploy/docker/Dockerfile from a clean clone of HEAD, and a smoke test starts
# kvtierd in the image on its example config (small tiers) and queries it with kvtierctl.
#   deploy/docker/build-offline.sh [TAG]        (root; installs buildah and debootstrap)
#   KVTIER_IMAGE_WORK=/var/tmp/kvtier-image     (rootfs, clone and logs)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-kvtier/kvtierd:0.1.0}
work=${KVTIER_IMAGE_WORK:-/var/tmp/kvtier-image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

need=()
for p in buildah debootstrap; do command -v "$p" >/dev/null || need+=("$p"); done
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
mkdir -p "$work"

if ! buildah inspect --type image docker.io/library/debian:bookworm >/dev/null 2>&1; then
  echo "== base image: debootstrap bookworm (minbase) from $mirror"
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log"
  c=$(buildah from scratch)
  mnt=$(buildah mount "$c")
  cp -a "$work/rootfs/." "$mnt/"
  buildah umount "$c" >/dev/null
  buildah config --cmd /bin/bash "$c"
  buildah commit -q "$c" docker.io/library/debian:bookworm >/dev/null
  buildah rm "$c" >/dev/null
  buildah tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
fi

echo "== build $tag from a clean clone of $(git rev-parse --short HEAD)"
rm -rf "$work/src"
git clone -q "$PWD" "$work/src"
start=$(date +%s)
(cd "$work/src" && buildah bud --format docker --pull=never --layers \
  --ignorefile deploy/docker/Dockerfile.dockerignore -f deploy/docker/Dockerfile -t "$tag" .) >"$work/build.log" 2>&1 ||
  { tail -30 "$work/build.log"; exit 1; }
echo "built in $(($(date +%s) - start)) s"
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$tag"

echo "== smoke test: kvtierd on the example config (small tiers), kvtierctl status"
c=$(buildah from "$tag")
trap 'buildah rm "$c" >/dev/null' EXIT
# The example config's tiers are sized for an H100 host; the smoke test keeps the SSD tier at 1 GiB.
# shellcheck disable=SC2016  # expanded inside the container
buildah run "$c" -- /bin/bash -c '
  set -e
  S=/run/kvtier/kvtierd.sock
  kvtierd --config=/etc/kvtier/kvtierd.conf --limits.gpu_pool_bytes=268435456 \
    --limits.host_tier_bytes=536870912 --limits.ssd_tier_bytes=1073741824 >/tmp/kvtierd.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -S $S ] && break; sleep 0.1; done
  kvtierctl --socket=$S --token=replace-with-a-random-admin-token status
  kill -TERM $pid
  wait $pid
  echo "kvtierd exit status $?"
  cat /tmp/kvtierd.log'
