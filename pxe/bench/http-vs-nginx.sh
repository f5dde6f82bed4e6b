#!/bin/sh
# HTTP asset throughput of `cairn serve` against Debian's nginx (sendfile on) on loopback: one curl
# fetching pxe-initrd.img, and CLIENTS simultaneous curls each fetching vmlinuz then initrd.img (all
# must complete). The two servers take turns, RUNS rounds; median and spread (min-max) of each, the
# ratio of the medians, and cairn's peak RSS.
# Needs: curl, nginx (Debian packages curl, nginx-light or nginx), an image folder from `cairn build`.
# Usage: pxe/bench/http-vs-nginx.sh IMAGE_DIR [RUNS] [CLIENTS]
#   SERVE=path/to/serve-binary to measure another build (default: the release `serve` example)
set -eu
IMG=${1:?usage: $0 IMAGE_DIR [RUNS] [CLIENTS]}
RUNS=${2:-3}
CLIENTS=${3:-200}
command -v curl >/dev/null || { echo "needs curl (Debian package curl)"; exit 1; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "needs nginx (Debian package nginx-light)"; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
: "${CARGO_TARGET_DIR:=target}"
if [ -z "${SERVE:-}" ]; then
    SERVE="$CARGO_TARGET_DIR/release/examples/serve"
    cargo build --release -p cairn-pxe --example serve
fi
W=$(mktemp -d)
trap 'kill $SPID $NPID 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/img" "$W/nginx/logs"
chmod 755 "$W" "$W/img"
for f in manifest.json vmlinuz initrd.img pxe-initrd.img; do
    ln "$IMG/$f" "$W/img/$f" 2>/dev/null || cp "$IMG/$f" "$W/img/$f"
done
NAME=$(sed -n 's/^  "name": "\(.*\)",$/\1/p' "$W/img/manifest.json")
VERSION=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$W/img/manifest.json")
printf 'profiles:\n  - name: p\n    image: img\ngroups:\n  - name: all\n    profile: p\n' > "$W/inv.yaml"
RUST_LOG=warn "$SERVE" --config "$W/inv.yaml" --http-addr 127.0.0.1:18080 --no-tftp &
SPID=$!
cat > "$W/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $W/nginx/nginx.pid;
error_log $W/nginx/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {
        listen 127.0.0.1:18081;
        location /assets/$NAME-$VERSION/ { alias $W/img/; }
    }
}
CONF
"$NGINX" -p "$W/nginx" -c "$W/nginx/nginx.conf" -g 'daemon off;' &
NPID=$!
sleep 1
curl -fsS http://127.0.0.1:18080/healthz >/dev/null
P="/assets/$NAME-$VERSION/pxe-initrd.img"
SIZE=$(stat -c %s "$W/img/pxe-initrd.img")
BYTES=$(( $(stat -c %s "$W/img/vmlinuz") + $(stat -c %s "$W/img/initrd.img") ))
# median, min and max of the numbers on stdin
stats() { sort -g | awk '{a[NR]=$1} END {printf "%s %s %s\n", a[int((NR+1)/2)], a[1], a[NR]}'; }
# CLIENTS curls at once against port $1, each GET vmlinuz then initrd.img; prints the wall time
crowd() {
    K="http://127.0.0.1:$1/assets/$NAME-$VERSION"
    rm -rf "$W/k"; mkdir "$W/k"
    START=$(date +%s.%N)
    PIDS=
    i=0
    while [ $i -lt "$CLIENTS" ]; do
        ( curl -fsS -o /dev/null "$K/vmlinuz" && curl -fsS -o /dev/null "$K/initrd.img" && echo ok ) > "$W/k/$i" 2>&1 &
        PIDS="$PIDS $!"
        i=$((i + 1))
    done
    for p in $PIDS; do wait "$p" || true; done
    END=$(date +%s.%N)
    OK=$(cat "$W"/k/* | grep -c '^ok$' || true)
    [ "$OK" -eq "$CLIENTS" ] || { echo "port $1: only $OK/$CLIENTS clients completed" >&2; exit 1; }
    echo "$END - $START" | bc
}
# both servers read the same files: warm the page cache once so neither pays the disk
cat "$W"/img/* > /dev/null
echo "one client: pxe-initrd.img, $SIZE bytes; $CLIENTS clients: vmlinuz + initrd.img, $BYTES bytes each; $RUNS rounds"
for r in $(seq "$RUNS"); do
    for port in 18080 18081; do
        curl -fsS -o /dev/null -w '%{speed_download}\n' "http://127.0.0.1:$port$P" >> "$W/one-$port"
    done
    for port in 18081 18080; do
        crowd $port >> "$W/crowd-$port"
    done
done
set -- $(stats < "$W/one-18080"); C1=$1; C1LO=$2; C1HI=$3
set -- $(stats < "$W/one-18081"); N1=$1; N1LO=$2; N1HI=$3
set -- $(stats < "$W/crowd-18080"); CC=$1; CCLO=$2; CCHI=$3
set -- $(stats < "$W/crowd-18081"); NC=$1; NCLO=$2; NCHI=$3
awk -v c="$C1" -v cl="$C1LO" -v ch="$C1HI" -v n="$N1" -v nl="$N1LO" -v nh="$N1HI" 'BEGIN {
    printf "1 client  (MB/s = 10^6 bytes/s, median [min-max])\n"
    printf "  cairn %6.0f [%.0f-%.0f]\n  nginx %6.0f [%.0f-%.0f]\n  ratio %.2fx\n", c/1e6, cl/1e6, ch/1e6, n/1e6, nl/1e6, nh/1e6, c/n }'
awk -v c="$CC" -v cl="$CCLO" -v ch="$CCHI" -v n="$NC" -v nl="$NCLO" -v nh="$NCHI" -v k="$CLIENTS" -v b="$BYTES" 'BEGIN {
    printf "%d clients, all complete (wall s, median [min-max]; aggregate MB/s)\n", k
    printf "  cairn %.2f [%.2f-%.2f] %.0f MB/s\n  nginx %.2f [%.2f-%.2f] %.0f MB/s\n  ratio %.2fx (nginx time / cairn time)\n", c, cl, ch, k*b/c/1e6, n, nl, nh, k*b/n/1e6, n/c }'
grep -E 'VmHWM|VmRSS' /proc/$SPID/status | tr -s ' \t' ' ' | sed 's/^/cairn serve /'
