#!/usr/bin/env bash
# Build the default image's package set from a warm package cache and
# compare, side by side, wall time and peak memory (max RSS):
#   cairn-clean    cairn build images/default.yaml, squashfs block cache
#                  emptied first (every data block compressed)
#   cairn-nochange the same build again into an empty output folder, block
#                  cache warm (every block found in the cache)
#   cairn-plus1    the default definition with one package more (htop, which
#                  brings libnl-3-200 and libnl-genl-3-200), block cache
#                  holding only the default image's blocks: the rebuild
#                  after one package changed
#   mmdebstrap     mmdebstrap --variant=essential of the same packages into
#                  a directory + mksquashfs -comp zstd (Debian's tools)
# RUNS rounds (default 3) run these in this order, so machine load affects
# all alike. Then, once: a clean build of the one-package-more definition,
# whose rootfs.squashfs must be byte for byte the incremental one, and the
# peak RSS of a clean build of bench/default-x2.yaml (about twice the
# default image's files) against the default's.
# Max RSS is GNU time's (%M): the largest single process of the command.
# Usage: bash bench/build-vs-mmdebstrap.sh   (as root; installs mmdebstrap,
# squashfs-tools and time if missing). Mirror: this machine's apt sources.
# Results: $BENCH_DIR/results.txt (run, row, seconds, max RSS KiB, CPU %:
# 200 is both cores busy for the whole command).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/tmp/cairn-bench}
runs=${RUNS:-3}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/cairn
mkdir -p "$work/debs"
for p in mmdebstrap squashfs-tools time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends "$p"; }
done

cargo build --release -q
cairn=$(realpath "${CARGO_TARGET_DIR:-target}/release/cairn")

# The definition with one package more, next to links to the default's
# overlay and keys; its lock is resolved here once (the warm-up).
plus1=$work/plus1
mkdir -p "$plus1"
sed 's/^  - less$/  - less\n  - htop/' images/default.yaml >"$plus1/default.yaml"
grep -q '^  - htop$' "$plus1/default.yaml"
ln -sfn "$PWD/images/default.overlay" "$plus1/default.overlay"
ln -sfn "$PWD/images/keys" "$plus1/keys"

# Warm cairn's package cache (both definitions) and make sure the locks exist.
$cairn build images/default.yaml -o "$work/cairn-warmup" >/dev/null
$cairn build "$plus1/default.yaml" -o "$work/plus1-warmup" >/dev/null
changed=$(diff <(grep -E '^  (version|sha256):|^- name:' images/default.lock) \
  <(grep -E '^  (version|sha256):|^- name:' "$plus1/default.lock") | grep -c '^> - name:' || true)
echo "packages in the one-more lock that the default lock lacks: $changed"

# The same top-level packages for mmdebstrap: the definition's packages + kernel.
pkgs=$(python3 - <<'PY'
import re
text = open("images/default.yaml").read()
m = re.search(r"^packages:\n((?:  - .*\n)+)", text, re.M)
pk = [l.strip()[2:].split("#")[0].strip() for l in m.group(1).splitlines()]
k = re.search(r"^kernel: (\S+)", text, re.M).group(1)
print(",".join(pk + [k]))
PY
)
suite=bookworm
mm() {
  mmdebstrap --variant=essential --include="$pkgs" \
    --aptopt='APT::Install-Recommends "false"' \
    --skip=download/empty --skip=cleanup/apt/cache \
    --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"; cp -l $work/debs/*.deb \"\$1/var/cache/apt/archives/\" 2>/dev/null || true" \
    --customize-hook="cp -n \"\$1\"/var/cache/apt/archives/*.deb $work/debs/ 2>/dev/null || true" \
    "$suite" "$1" >/dev/null 2>&1
}
mm_and_squash() {
  rm -rf "$work/mm-root" "$work/mm.squashfs"
  mm "$work/mm-root"
  rm -rf "$work/mm-root/var/cache/apt/archives/"*.deb
  mksquashfs "$work/mm-root" "$work/mm.squashfs" -comp zstd -noappend -quiet >/dev/null
}
export -f mm mm_and_squash
export work pkgs suite
# Warm mmdebstrap's cache.
rm -rf "$work/mm-warm"; mm "$work/mm-warm"; rm -rf "$work/mm-warm"

results=$work/results.txt
: >"$results"
# measure RUN ROW COMMAND...: wall seconds and max RSS into results.txt
measure() {
  local run=$1 row=$2
  shift 2
  /usr/bin/time -f '%e %M %P' -o "$work/time.txt" "$@" >/dev/null 2>"$work/$row.err" ||
    { cat "$work/$row.err" >&2; exit 1; }
  read -r secs kib cpu <"$work/time.txt"
  echo "$run $row $secs $kib ${cpu%\%}" | tee -a "$results"
}

for run in $(seq 1 "$runs"); do
  rm -rf "$cache/blocks" "$work/cairn-out"
  measure "$run" cairn-clean $cairn build images/default.yaml -o "$work/cairn-out"
  rm -rf "$work/cairn-out"
  measure "$run" cairn-nochange $cairn build images/default.yaml -o "$work/cairn-out"
  rm -rf "$work/plus1-out"
  measure "$run" cairn-plus1 $cairn build "$plus1/default.yaml" -o "$work/plus1-out"
  measure "$run" mmdebstrap bash -c mm_and_squash
done

# The incremental image is the clean one.
rm -rf "$cache/blocks" "$work/plus1-clean"
$cairn build "$plus1/default.yaml" -o "$work/plus1-clean" >/dev/null
a=$(sha256sum <"$work/plus1-out/rootfs.squashfs")
b=$(sha256sum <"$work/plus1-clean/rootfs.squashfs")
if [ "$a" = "$b" ]; then same=yes; else same=NO; fi
echo "one-package-more rootfs.squashfs, incremental = clean: $same (${a%% *})"

# Peak memory against the image's size.
rm -rf "$cache/blocks" "$work/x2-out"
measure x2 cairn-x2-clean $cairn build bench/default-x2.yaml -o "$work/x2-out"

python3 - "$results" "$work" <<'PY'
import os, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    run, row, secs, kib, cpu = line.split()
    rows.setdefault(row, []).append((float(secs), int(kib), int(cpu)))
work = sys.argv[2]
def files(d):
    total = 0
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total
print()
print("| row | wall time per run (s) | median | max RSS (MiB) | CPU % |")
print("|---|---|---|---|---|")
for row, v in rows.items():
    secs = [s for s, _, _ in v]
    rss = [k / 1024 for _, k, _ in v]
    cpu = [c for _, _, c in v]
    print(f"| {row} | {' / '.join(f'{s:.1f}' for s in secs)} | {statistics.median(secs):.1f} "
          f"| {min(rss):.0f}-{max(rss):.0f} | {min(cpu)}-{max(cpu)} |")
mm = statistics.median(r[0] for r in rows["mmdebstrap"])
for row in ("cairn-clean", "cairn-nochange", "cairn-plus1"):
    c = statistics.median(r[0] for r in rows[row])
    print(f"{row}: {c / mm:.2f}x mmdebstrap's median wall time")
for name, path in (("cairn", f"{work}/cairn-out/rootfs.squashfs"),
                   ("mmdebstrap", f"{work}/mm.squashfs"),
                   ("x2", f"{work}/x2-out/rootfs.squashfs")):
    print(f"{name} image: {os.path.getsize(path) / 2**20:.1f} MiB")
PY
