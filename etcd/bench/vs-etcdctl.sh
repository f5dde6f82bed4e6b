#!/bin/sh
# cairn-etcd against etcdctl (Debian's etcd-client) on one etcd 3.4 member on 127.0.0.1:
#  1. in-process throughput of cairn-etcd (examples/bench.rs `run`): sequential and concurrent
#     puts, and a range of 10,000 keys;
#  2. the same work as one process per command, both ways: N x `etcdctl put` against
#     N x `bench put`, and `etcdctl get --prefix` against `bench get-prefix` over the 10,000 keys
#     (best of 5), output to /dev/null; and curl fetching the same range from the gateway, to
#     separate etcd's JSON encoding from the client's work.
# Prints the figures and the ratios. Usage: etcd/bench/vs-etcdctl.sh [N_PUTS]
set -eu
cd "$(dirname "$0")/../.."
N="${1:-300}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-etcd-bench}"
cargo build -q --release -p cairn-etcd --example bench
BENCH="$CARGO_TARGET_DIR/release/examples/bench"
command -v etcdctl >/dev/null || { echo "etcdctl not found: apt-get install etcd-client" >&2; exit 1; }
[ -x /usr/bin/etcd ] || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }

DIR=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CP=$(free_port); PP=$(free_port)
EP="http://127.0.0.1:$CP"
/usr/bin/etcd --name b --data-dir "$DIR/b.etcd" \
  --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
  --initial-cluster "b=http://127.0.0.1:$PP" >"$DIR/etcd.log" 2>&1 &
ETCD=$!
trap 'kill $ETCD 2>/dev/null; wait $ETCD 2>/dev/null; rm -rf "$DIR"' EXIT
i=0
until curl -s "$EP/health" | grep -q '"health":"true"'; do
  i=$((i + 1)); [ $i -lt 100 ] || { cat "$DIR/etcd.log"; exit 1; }; sleep 0.2
done

echo "== cairn-etcd in process"
"$BENCH" run --endpoint "$EP"

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
export ETCDCTL_API=3

echo "== $N puts, one process each"
t0=$(now); k=0
while [ $k -lt "$N" ]; do etcdctl --endpoints "$EP" put "/cmp/ctl/$k" v >/dev/null; k=$((k + 1)); done
t_ctl=$(secs "$t0" "$(now)")
t0=$(now); k=0
while [ $k -lt "$N" ]; do "$BENCH" put --endpoint "$EP" "/cmp/ours/$k" v >/dev/null; k=$((k + 1)); done
t_ours=$(secs "$t0" "$(now)")
printf 'etcdctl put:   %.0f puts/s\nbench put:     %.0f puts/s\nratio (cairn-etcd / etcdctl): %.2f\n' \
  "$(echo "$N / $t_ctl" | bc -l)" "$(echo "$N / $t_ours" | bc -l)" "$(echo "$t_ctl / $t_ours" | bc -l)"

echo "== range of the 10,000 keys, one process, best of 5"
best() { # command...
  b=999
  for _ in 1 2 3 4 5; do
    t0=$(now); "$@" >/dev/null; t=$(secs "$t0" "$(now)")
    b=$(echo "if ($t < $b) $t else $b" | bc -l)
  done
  echo "$b"
}
n_ctl=$(etcdctl --endpoints "$EP" get --prefix /bench/range/ | wc -l)
n_ours=$("$BENCH" get-prefix --endpoint "$EP" /bench/range/ | wc -l)
[ "$n_ctl" = "$n_ours" ] || { echo "different output: $n_ctl against $n_ours lines" >&2; exit 1; }
r_ctl=$(best etcdctl --endpoints "$EP" get --prefix /bench/range/)
r_ours=$(best "$BENCH" get-prefix --endpoint "$EP" /bench/range/)
printf 'etcdctl get --prefix:  %.1f ms\nbench get-prefix:      %.1f ms\nratio (etcdctl time / cairn-etcd time): %.2f\n' \
  "$(echo "$r_ctl * 1000" | bc -l)" "$(echo "$r_ours * 1000" | bc -l)" "$(echo "$r_ctl / $r_ours" | bc -l)"
K=$(printf /bench/range/ | base64); E=$(printf /bench/range0 | base64)
r_curl=$(best curl -s "$EP/v3/kv/range" -d "{\"key\":\"$K\",\"range_end\":\"$E\"}")
printf 'the gateway alone (curl, no decoding): %.1f ms\n' "$(echo "$r_curl * 1000" | bc -l)"
one_ctl=$(best etcdctl --endpoints "$EP" get /bench/range/00000000)
one_ours=$(best "$BENCH" get-prefix --endpoint "$EP" /bench/range/00000000)
printf 'one key, for the start-up cost: etcdctl %.1f ms, bench %.1f ms\n' \
  "$(echo "$one_ctl * 1000" | bc -l)" "$(echo "$one_ours * 1000" | bc -l)"
