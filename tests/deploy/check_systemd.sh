#!/usr/bin/env bash
# Checks deploy/systemd: `systemd-analyze verify` on kvtierd.service (any warning fails), then applies
# kvtier.sysusers.conf and kvtier.tmpfiles.conf to a scratch root and checks the user, group and
# directories they create.
#   check_systemd.sh SOURCE_DIR KVTIERD_BINARY
# Exit 77 (skipped) when systemd's tools are not installed.
set -euo pipefail
src=$1
kvtierd=$2
unit_dir="$src/deploy/systemd"

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIPPED: $tool is not installed (Debian package systemd)"
    exit 77
  fi
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# verify checks that ExecStart names an executable; point the installed path at the built binary.
installed=/usr/local/bin/kvtierd
grep -q "^ExecStart=$installed " "$unit_dir/kvtierd.service" || {
  echo "FAIL: kvtierd.service does not start $installed"
  exit 1
}
sed "s#^ExecStart=$installed #ExecStart=$kvtierd #" "$unit_dir/kvtierd.service" >"$scratch/kvtierd.service"
if ! out=$(systemd-analyze verify "$scratch/kvtierd.service" 2>&1) || [ -n "$out" ]; then
  echo "FAIL: systemd-analyze verify kvtierd.service:"
  echo "$out"
  exit 1
fi
echo "ok: systemd-analyze verify kvtierd.service"

# The unit's directories and the snippets' must agree.
for want in "RuntimeDirectory=kvtier" "StateDirectory=kvtier" "User=kvtier" "Type=notify" "LimitMEMLOCK=infinity"; do
  grep -qx "$want" "$unit_dir/kvtierd.service" || {
    echo "FAIL: kvtierd.service lacks $want"
    exit 1
  }
done

if [ "$(id -u)" -ne 0 ]; then
  echo "ok (partly): sysusers/tmpfiles not applied: creating a root's files with their owners needs root"
  exit 0
fi
root="$scratch/root"
mkdir -p "$root/etc/sysusers.d" "$root/etc/tmpfiles.d"
cp "$unit_dir/kvtier.sysusers.conf" "$root/etc/sysusers.d/kvtier.conf"
cp "$unit_dir/kvtier.tmpfiles.conf" "$root/etc/tmpfiles.d/kvtier.conf"
systemd-sysusers --root="$root"
grep -q '^kvtier:x:[0-9]*:[0-9]*:[^:]*:/var/lib/kvtier:/usr/sbin/nologin$' "$root/etc/passwd" || {
  echo "FAIL: sysusers did not create the kvtier user:"
  cat "$root/etc/passwd"
  exit 1
}
grep -q '^kvtier:' "$root/etc/group" || {
  echo "FAIL: sysusers did not create the kvtier group"
  exit 1
}
systemd-tmpfiles --root="$root" --create
uid=$(awk -F: '$1 == "kvtier" { print $3 }' "$root/etc/passwd")
for d in run/kvtier var/lib/kvtier var/lib/kvtier/ssd; do
  got=$(stat -c '%a %u' "$root/$d")
  [ "$got" = "750 $uid" ] || {
    echo "FAIL: /$d is '$got', want '750 $uid'"
    exit 1
  }
done
echo "ok: sysusers and tmpfiles create the kvtier user and its directories"
