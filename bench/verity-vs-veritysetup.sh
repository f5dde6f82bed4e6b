#!/usr/bin/env bash
# dm-verity tree build: cairn (cairn-verity's append_tree, the code
# `cairn build` runs) against Debian's `veritysetup format` on the same
# bytes: the data area of an image folder's rootfs.squashfs (the squashfs
# padded to 4096 bytes), same salt, same UUID, tree after the data in the
# same file. Runs alternate (cairn, veritysetup, cairn, ...; RUNS each,
# default 3), each on a fresh copy in the page cache, timed from outside
# (process start included); the outputs must be byte-identical. Prints
# each run, the medians and the ratio.
# Usage: bash bench/verity-vs-veritysetup.sh OUT   (OUT: a `cairn build`
# output folder, e.g. out/default; installs cryptsetup-bin if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/verity-vs-veritysetup.sh OUT (a cairn build output folder)}
runs=${RUNS:-3}
work=${BENCH_DIR:-/tmp/cairn-bench-verity}
command -v veritysetup >/dev/null ||
  { apt-get update -q && apt-get install -y -q --no-install-recommends cryptsetup-bin; }
cargo build --release -q -p cairn-verity --example append_tree
ours=${CARGO_TARGET_DIR:-target}/release/examples/append_tree
mkdir -p "$work"

# the data area: up to the tree's superblock when the image has one
off=$(sed -n 's/.*"hash_offset": *\([0-9]*\).*/\1/p' "$out/manifest.json")
if [ -z "$off" ]; then
  off=$(( ($(stat -c %s "$out/rootfs.squashfs") + 4095) / 4096 * 4096 ))
fi
head -c "$off" "$out/rootfs.squashfs" >"$work/data"
truncate -s "$off" "$work/data"
blocks=$((off / 4096))
echo "data area: $off bytes ($blocks blocks) from $out/rootfs.squashfs; $(nproc) cores"

now() { date +%s.%N; }
declare -a t_ours t_vs
for i in $(seq "$runs"); do
  cp "$work/data" "$work/ours"; cat "$work/ours" >/dev/null
  t0=$(now); "$ours" "$work/ours" bench >"$work/ours.txt"; t1=$(now)
  t_ours+=("$(echo "$t1 - $t0" | bc)")
  salt=$(awk '$1 == "salt" {print $2}' "$work/ours.txt")
  uuid=$(awk '$1 == "uuid" {print $2}' "$work/ours.txt")
  root=$(awk '$1 == "root_hash" {print $2}' "$work/ours.txt")

  cp "$work/data" "$work/theirs"; cat "$work/theirs" >/dev/null
  t0=$(now)
  veritysetup format "$work/theirs" "$work/theirs" --hash-offset="$off" --data-blocks="$blocks" \
    --format=1 --hash=sha256 --data-block-size=4096 --hash-block-size=4096 \
    --salt="$salt" --uuid="$uuid" >"$work/theirs.txt"
  t1=$(now)
  t_vs+=("$(echo "$t1 - $t0" | bc)")
  their_root=$(awk -F: '/^Root hash/ {gsub(/[ \t]/, "", $2); print $2}' "$work/theirs.txt")
  [ "$root" = "$their_root" ] || { echo "root hashes differ: $root vs $their_root" >&2; exit 1; }
  cmp "$work/ours" "$work/theirs" || { echo "the files differ" >&2; exit 1; }
  printf 'run %d: cairn %.3f s, veritysetup format %.3f s\n' "$i" "${t_ours[-1]}" "${t_vs[-1]}"
done
veritysetup verify "$work/ours" "$work/ours" "$root" --hash-offset="$off"
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(median "${t_ours[@]}"); mv=$(median "${t_vs[@]}")
printf 'median: cairn %.3f s, veritysetup format %.3f s, veritysetup/cairn %.2fx; root hash %s (identical files, veritysetup verify OK)\n' \
  "$mo" "$mv" "$(echo "$mv / $mo" | bc -l)" "$root"
rm -f "$work/ours" "$work/theirs" "$work/data"
