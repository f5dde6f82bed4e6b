#!/bin/sh
# HTTP asset throughput of `cairn serve` against Debian's nginx on loopback, and 200 simultaneous clients
# fetching kernel + initrd from `cairn serve` (all must complete; wall time and server peak RSS).
# Needs: curl, nginx (Debian packages curl, nginx-light or nginx), an image folder from `cairn build`.
# Usage: pxe/bench/http-vs-nginx.sh IMAGE_DIR [RUNS] [CLIENTS]
set -eu
IMG=${1:?usage: $0 IMAGE_DIR [RUNS] [CLIENTS]}
RUNS=${2:-5}
CLIENTS=${3:-200}
command -v curl >/dev/null || { echo "needs curl (Debian package curl)"; exit 1; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "needs nginx (Debian package nginx-light)"; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
: "${CARGO_TARGET_DIR:=target}"
SERVE="$CARGO_TARGET_DIR/release/examples/serve"
[ -x "$SERVE" ] || cargo build --release -p cairn-pxe --example serve
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
echo "file: pxe-initrd.img, $SIZE bytes, $RUNS runs each (MB/s = 10^6 bytes/s, median)"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for who in "cairn 18080" "nginx 18081"; do
    set -- $who
    for i in $(seq "$RUNS"); do
        curl -fsS -o /dev/null -w '%{speed_download}\n' "http://127.0.0.1:$2$P"
    done | median | awk -v n="$1" '{printf "%-6s %8.0f MB/s\n", n, $1/1e6}'
done
echo "$CLIENTS clients, each GET vmlinuz then initrd.img from cairn serve"
K="http://127.0.0.1:18080/assets/$NAME-$VERSION"
START=$(date +%s.%N)
i=0
while [ $i -lt "$CLIENTS" ]; do
    ( curl -fsS -o /dev/null "$K/vmlinuz" && curl -fsS -o /dev/null "$K/initrd.img" && echo ok ) > "$W/c$i" 2>&1 &
    PIDS="${PIDS:-} $!"
    i=$((i + 1))
done
for p in $PIDS; do wait "$p" || true; done
END=$(date +%s.%N)
OK=$(cat "$W"/c* | grep -c '^ok$' || true)
BYTES=$(( $(stat -c %s "$W/img/vmlinuz") + $(stat -c %s "$W/img/initrd.img") ))
echo "$OK/$CLIENTS completed in $(echo "$END - $START" | bc) s ($(echo "$CLIENTS * $BYTES / ($END - $START) / 1000000" | bc) MB/s aggregate)"
grep -E 'VmHWM|VmRSS' /proc/$SPID/status | tr -s ' \t' ' ' | sed 's/^/cairn serve /'
