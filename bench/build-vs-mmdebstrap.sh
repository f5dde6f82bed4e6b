#!/usr/bin/env bash
# Build the default image's package set two ways, both from a warm cache,
# and print wall times, their ratio and both image sizes:
#   A) cairn build images/default.yaml (lock present, packages cached)
#   B) mmdebstrap (Debian's tool) into a directory + mksquashfs -comp zstd
# Usage: bash bench/build-vs-mmdebstrap.sh   (as root; installs mmdebstrap
# and squashfs-tools if missing). Mirror: this machine's apt sources.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/tmp/cairn-bench}
mkdir -p "$work/debs"
for p in mmdebstrap squashfs-tools; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends "$p"; }
done

cargo build --release -q
cairn=${CARGO_TARGET_DIR:-target}/release/cairn

# Warm cairn's cache and make sure the lock exists.
$cairn build images/default.yaml -o "$work/cairn-warmup" >/dev/null

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
# Warm mmdebstrap's cache.
rm -rf "$work/mm-warm"; mm "$work/mm-warm"; rm -rf "$work/mm-warm"

# A) cairn
rm -rf "$work/cairn-out"
t0=$(date +%s.%N)
$cairn build images/default.yaml -o "$work/cairn-out" >/dev/null
t1=$(date +%s.%N)
cairn_s=$(echo "$t1 - $t0" | bc)
cairn_size=$(stat -c %s "$work/cairn-out/rootfs.squashfs")

# B) mmdebstrap + mksquashfs
rm -rf "$work/mm-root" "$work/mm.squashfs"
t0=$(date +%s.%N)
mm "$work/mm-root"
rm -rf "$work/mm-root/var/cache/apt/archives/"*.deb
mksquashfs "$work/mm-root" "$work/mm.squashfs" -comp zstd -noappend -quiet >/dev/null
t1=$(date +%s.%N)
mm_s=$(echo "$t1 - $t0" | bc)
mm_size=$(stat -c %s "$work/mm.squashfs")

printf 'cairn build:              %6.1f s  image %6.1f MiB\n' "$cairn_s" "$(echo "$cairn_size/1048576" | bc -l)"
printf 'mmdebstrap + mksquashfs:  %6.1f s  image %6.1f MiB\n' "$mm_s" "$(echo "$mm_size/1048576" | bc -l)"
printf 'speed ratio (mmdebstrap/cairn): %.2fx   size ratio (cairn/mmdebstrap): %.2f\n' \
  "$(echo "$mm_s/$cairn_s" | bc -l)" "$(echo "$cairn_size/$mm_size" | bc -l)"
