#!/usr/bin/env bash
# A second opinion on the raw disk bandwidth the SSD benchmark compares against: fio (Debian package
# `fio`) doing the same sequential O_DIRECT io_uring I/O with registered buffers, queue depth and block
# size. Prints one line per direction in GB/s.
#   bench/ssd/fio_baseline.sh DIR [SIZE_GIB=2] [QD=16] [BS=1M]
set -euo pipefail
dir=${1:?usage: fio_baseline.sh DIR [SIZE_GIB] [QD] [BS]}
size=${2:-2}
qd=${3:-16}
bs=${4:-1M}
file="$dir/fio_baseline.bin"
mkdir -p "$dir"
common=(--filename="$file" --size="${size}G" --bs="$bs" --iodepth="$qd" --direct=1 --ioengine=io_uring
        --fixedbufs --registerfiles --output-format=json --name=seq)
w=$(fio "${common[@]}" --rw=write --end_fsync=1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e9)')
r=$(fio "${common[@]}" --rw=read | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1e9)')
rm -f "$file"
printf 'fio write_gbps=%.3f read_gbps=%.3f size_gib=%s qd=%s bs=%s\n' "$w" "$r" "$size" "$qd" "$bs"
