#!/usr/bin/env bash
# cairn's disk image writers against qemu-img on the same raw disk:
#   qcow2: cairn_disk::qcow2::write (what `cairn build --format qcow2` runs; the crate's `qcow2`
#          example) against `qemu-img convert -f raw -O qcow2 -c`;
#   vmdk:  cairn_disk::vmdk::write (`--format vmdk`; the `vmdk` example) against
#          `qemu-img convert -f raw -O vmdk -o subformat=streamOptimized`.
# Per tool: wall time and CPU time (user + system, /usr/bin/time) as the median of RUNS (default 3)
# rounds, the tools alternating in each round (rotating who goes first) so machine load touches all
# alike; the output's size; every output checked with `qemu-img compare` against the raw disk.
# The raw disk is read once before the first round, so every run finds it in the page cache.
# Usage: bash bench/disk-formats.sh [RAW]
#   RAW defaults to out/default/disk.raw, from: cargo run --release -- build images/default.yaml -o out/default
set -euo pipefail
cd "$(dirname "$0")/.."
raw=${1:-out/default/disk.raw}
runs=${RUNS:-3}
work=${BENCH_DIR:-/tmp/cairn-bench-formats}
[ -f "$raw" ] || { echo "no raw disk at $raw: build the default image first (see the usage line)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img missing: apt-get install qemu-utils" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time missing: apt-get install time" >&2; exit 1; }

cargo build --release -q -p cairn-disk --example qcow2 --example vmdk
bin=${CARGO_TARGET_DIR:-target}/release/examples
rm -rf "$work" && mkdir -p "$work"
cat "$raw" >/dev/null

tools=(cairn-qcow2 qemu-qcow2 cairn-vmdk qemu-vmdk)
run() { # TOOL OUT
  case $1 in
    cairn-qcow2) "$bin/qcow2" "$raw" "$2" >/dev/null ;;
    qemu-qcow2) qemu-img convert -f raw -O qcow2 -c "$raw" "$2" ;;
    cairn-vmdk) "$bin/vmdk" "$raw" "$2" >/dev/null ;;
    qemu-vmdk) qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$raw" "$2" ;;
  esac
}
out_of() { case $1 in *qcow2) echo "$work/$1.qcow2" ;; *) echo "$work/$1.vmdk" ;; esac; }

for ((r = 0; r < runs; r++)); do
  for ((i = 0; i < ${#tools[@]}; i++)); do
    t=${tools[$(((i + r) % ${#tools[@]}))]}
    out=$(out_of "$t")
    rm -f "$out"
    /usr/bin/time -f "%e %U %S" -o "$work/$t.time.$r" bash -c "$(declare -f run); raw='$raw' bin='$bin' run $t '$out'"
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A wall cpu size
for t in "${tools[@]}"; do
  out=$(out_of "$t")
  fmt=${out##*.}
  qemu-img compare -q -f raw -F "$fmt" "$raw" "$out" || { echo "$t: $out differs from $raw" >&2; exit 1; }
  wall[$t]=$(cat "$work/$t".time.* | awk '{ print $1 }' | median)
  cpu[$t]=$(cat "$work/$t".time.* | awk '{ print $2 + $3 }' | median)
  size[$t]=$(stat -c %s "$out")
done

echo "raw disk: $raw ($(stat -c %s "$raw") bytes, $(du -B1 "$raw" | cut -f1) allocated); $runs rounds; $(qemu-img --version | head -1)"
printf '| %-12s | %9s | %9s | %14s |\n' tool "wall (s)" "CPU (s)" "size (bytes)"
printf '|%s|%s|%s|%s|\n' -------------- ----------- ----------- ----------------
for t in "${tools[@]}"; do
  printf '| %-12s | %9s | %9.2f | %14s |\n' "$t" "${wall[$t]}" "${cpu[$t]}" "${size[$t]}"
done
for f in qcow2 vmdk; do
  awk -v f="$f" -v cw="${wall[cairn-$f]}" -v qw="${wall[qemu-$f]}" -v cc="${cpu[cairn-$f]}" \
    -v qc="${cpu[qemu-$f]}" -v cs="${size[cairn-$f]}" -v qs="${size[qemu-$f]}" \
    'BEGIN { printf "%s: cairn / qemu-img: wall %.2fx, CPU %.2fx, size %.3fx\n", f, cw / qw, cc / qc, cs / qs }'
done
