#!/bin/sh
# Time cairn-cloudinit applying a Deis-sized cloud-config (13 units,
# drop-ins, 9 files, 2 users, etcd2/fleet/update) under a temporary root:
# first run (users created) and second run (nothing changes).
# Needs: passwd (useradd/usermod), systemd (systemctl). Run as root.
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-cloudinit}"
cargo build --release -q -p cairn-cloudinit --bin cairn-cloudinit
bin="$CARGO_TARGET_DIR/release/cairn-cloudinit"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc"
printf 'root:x:0:0::/root:/bin/sh\ncore:x:500:500::/home/core:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\ncore:x:500:\ndocker:x:999:\n' >"$root/etc/group"
: >"$root/etc/shadow"
: >"$root/etc/gshadow"
for run in first second; do
    start=$(date +%s%N)
    "$bin" --root "$root" --from-file cloudinit/tests/fixtures/deis.yaml --private-ipv4 10.0.2.15 2>/dev/null || true
    end=$(date +%s%N)
    apply=$(sed -n 's/.*"apply_ms": \([0-9]*\).*/\1/p' "$root/run/cairn/cloudinit.status")
    echo "$run run: wall $(( (end - start) / 1000000 )) ms, start of application to last unit written ${apply} ms"
done
