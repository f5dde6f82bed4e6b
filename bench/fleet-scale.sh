#!/usr/bin/env bash
# fleet at scale on one machine: one real etcd (Debian's etcd-server) on
# 127.0.0.1, AGENTS simulated agents (`fleetd --systemd=sim`, a documented
# mode of the real binary) in three fleetd processes, UNITS template
# instances started with one `fleetctl start`. Reports:
#   - time from `fleetctl start` to every unit reported active/running;
#   - etcd requests per second at rest (from etcd's own /metrics:
#     grpc_server_started_total, lease keep-alives apart), before and after
#     the units exist: at rest the load must not grow with the units;
#   - CPU seconds and peak RSS of the engine's process and the agents';
#   - time to run every unit again after 10% of the agents are SIGKILLed.
#
#   bash bench/fleet-scale.sh [AGENTS [UNITS]]     (default 1000 10000)
#
# Needs: etcd-server (etcd), a built workspace (cargo build --release -p
# cairn-fleetd -p cairn-fleetctl). Everything listens on 127.0.0.1 only and
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${1:-1000}
UNITS=${2:-10000}
TTL=${TTL:-10s}
KILL=$((AGENTS / 10))
MAIN=$((AGENTS - KILL - 1))

cargo build --release -q -p cairn-fleetd -p cairn-fleetctl
FLEETD=$PWD/target/release/fleetd
FLEETCTL=$PWD/target/release/fleetctl
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$((20000 + RANDOM % 10000))
EP=http://127.0.0.1:$port
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
  --initial-cluster "bench=http://127.0.0.1:$((port + 1))" \
  --quota-backend-bytes $((4 << 30)) >"$work/etcd.log" 2>&1 &
pids+=($!)
etcd_pid=$!
for _ in $(seq 100); do curl -sf "$EP/health" >/dev/null && break; sleep 0.1; done
: >"$work/empty.conf"

fleetd() { # ID N [flags...]
  local id=$1 n=$2
  shift 2
  "$FLEETD" --config "$work/empty.conf" --systemd=sim --sim-agents "$n" --machine-id "$id" \
    --public-ip 127.0.0.1 --etcd-servers "$EP" --agent-ttl "$TTL" "$@" >"$work/$id.log" 2>&1 &
  pids+=($!)
}
fleetd engine 1
engine_pid=$!
fleetd main "$MAIN" --disable-engine
main_pid=$!
fleetd doomed "$KILL" --disable-engine
doomed_pid=$!

F() { "$FLEETCTL" --endpoint "$EP" "$@"; }
count() { F list-units --no-legend | awk '$3 == "active" && $4 == "running"' | wc -l; }
requests() { # all gRPC requests etcd started but the lease keep-alive stream's
  curl -sf "$EP/metrics" | awk '/^grpc_server_started_total/ && !/LeaseKeepAlive/ { s += $2 } END { printf "%d", s }'
}
keepalives() {
  curl -sf "$EP/metrics" | awk '/^grpc_server_msg_received_total/ && /LeaseKeepAlive/ { s += $2 } END { printf "%d", s }'
}
cpu() { # CPU seconds of a process
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"
}
rss() { awk '/VmHWM/ { printf "%d MiB", $2 / 1024 }' "/proc/$1/status"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
rest_rate() { # requests/s and keep-alives/s over 20 s
  local r0 k0 r1 k1
  r0=$(requests) k0=$(keepalives)
  sleep 20
  r1=$(requests) k1=$(keepalives)
  awk -v a="$r0" -v b="$r1" -v c="$k0" -v d="$k1" 'BEGIN { printf "%.1f requests/s (+ %.1f lease keep-alives/s)", (b - a) / 20, (d - c) / 20 }'
}

t=$(now)
until [ "$(F list-machines --no-legend | wc -l)" -ge "$AGENTS" ]; do sleep 0.5; done
echo "$AGENTS agents joined in $(since "$t") s"
echo "at rest, no units: $(rest_rate)"

printf '[Unit]\nDescription=bench %%i\n\n[Service]\nExecStart=/bin/sleep infinity\n' >"$work/app@.service"
cd "$work"
t=$(now)
F start --no-block "app@{1..$UNITS}.service" >/dev/null
started=$(since "$t")
until [ "$(count)" -ge "$UNITS" ]; do sleep 1; done
echo "$UNITS units: fleetctl start returned in $started s; all active/running after $(since "$t") s"
echo "engine process: $(cpu "$engine_pid") CPU s so far, peak RSS $(rss "$engine_pid")"
echo "agents ($MAIN in one process): $(cpu "$main_pid") CPU s so far, peak RSS $(rss "$main_pid")"
echo "at rest, $UNITS units: $(rest_rate)"
echo "etcd: $(cpu "$etcd_pid") CPU s so far, peak RSS $(rss "$etcd_pid")"

e0=$(cpu "$engine_pid")
t=$(now)
kill -9 "$doomed_pid"
# the doomed agents' units are reported by nobody once their lease expires;
# wait for the reports of every unit again, none on a dead machine
until [ "$(F list-units --no-legend | awk '$3 == "active" && $4 == "running" && $2 !~ /^doomed/' | wc -l)" -ge "$UNITS" ]; do sleep 1; done
echo "$KILL agents killed: every unit running again after $(since "$t") s (agent_ttl $TTL); engine CPU $(awk -v a="$e0" -v b="$(cpu "$engine_pid")" 'BEGIN { printf "%.1f", b - a }') s for it"
