#!/usr/bin/env bash
# Server-side cost of the machines' reports to `cairn serve` (issue 17):
# N diskless machines netboot (GET /ipxe?mac=..&platform=efi, which makes
# their records) and report `booted` and `healthy` (POST
# /lifecycle/v1/report), from the load generator pxe/examples/report_load.rs
# (CONCURRENCY clients, keep-alive). Per run, a fresh `cairn serve` (release
# build, default log level, records in files under its own state dir) and:
#   - reports/s (wall) and p50/p99 latency of the reports, and of the netboots;
#   - the server's peak RSS (VmHWM) at rest, after the netboots and after the
#     reports, and per machine;
#   - the server's CPU seconds (utime + stime) per 1,000 reports;
#   - the records: GET /lifecycle (admin) must say N machines running the
#     version from RAM, healthy, with it as their last good diskless version;
#     its size and time; the state on disk (files, bytes, blocks);
#   - a restart on the same state dir: time until /healthz answers and the
#     peak RSS with N records read back.
# RUNS runs (default 3) in a row for the spread, then a table.
#
#   bash bench/lifecycle-reports.sh [N]      (default 10000)
#   env: RUNS=3 CONCURRENCY=32 TIMEOUT=2400 (seconds, the whole measurement)
#        PERF=1 (perf record -g of the server during the reports of run 1)
#        ROLLOUT=1 (the image is on channel `lab` with a rollout of its version
#        in one 100% wave: every healthy report also counts in the rollout)
#
# Needs: curl, jq; a Rust toolchain (builds cairn-cli and the example, release).
# Everything listens on 127.0.0.1 only and stops by itself (trap; timeout).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
RUNS=${RUNS:-3}
C=${CONCURRENCY:-32}
TIMEOUT=${TIMEOUT:-2400}
VERSION=1.0.0

if [ -z "${_LIFECYCLE_BENCH_TIMED:-}" ]; then
  cargo build --release -q -p cairn-cli
  cargo build --release -q -p cairn-pxe --example report_load
  export _LIFECYCLE_BENCH_TIMED=1
  # the measurement, bounded as a whole (the signal reaches the whole group)
  exec timeout -k 10 "$TIMEOUT" bash "$0" "$@"
fi

CAIRN=$PWD/target/release/cairn
LOAD=$PWD/target/release/examples/report_load
HZ=$(getconf CLK_TCK)
results=$(mktemp "${TMPDIR:-/tmp}/lifecycle-bench-results.XXXXXX")
work=
pid=
perf_pid=
cleanup() {
  [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null || true
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "$work" ] && rm -rf "$work"
  rm -f "$results"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu() { awk -v hz="$HZ" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
hwm() { awk '/VmHWM/ { print $2 }' "/proc/$1/status"; } # KiB
rss() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; } # KiB
now() { date +%s.%N; }
field() { # KEY LINE: the value of KEY=VALUE in LINE
  tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k { print $2 }'
}
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

start_server() { # STATE_DIR: starts it, sets pid
  "$CAIRN" serve --config "$work/inventory.yaml" --http-addr "127.0.0.1:$port" \
    --admin-addr "127.0.0.1:$((port + 1))" --no-tftp --ipxe-dir "$work/ipxe" \
    --state-dir "$1" >>"$work/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "cairn serve did not start:" >&2
  tail -20 "$work/serve.log" >&2
  exit 1
}

stop_server() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}

echo "lifecycle reports: N=$N machines, $RUNS run(s), $C clients${ROLLOUT:+, rollout}; $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq "$RUNS"); do
  work=$(mktemp -d "${TMPDIR:-/tmp}/lifecycle-bench.XXXXXX")
  # a small image folder (the cost measured is the records'), signed for a rollout
  "$LOAD" --make-image "$work/img" --image img --version "$VERSION" ${ROLLOUT:+--channel lab}
  mkdir -p "$work/ipxe" "$work/state"
  cat >"$work/inventory.yaml" <<EOF
profiles:
  - name: diskless
    image: img
groups:
  - name: everyone
    profile: diskless
EOF
  if [ -n "${ROLLOUT:-}" ]; then
    cat >>"$work/inventory.yaml" <<EOF
rollouts:
  - channel: lab
    version: $VERSION
    max_failures: 0
    waves:
      - name: everyone
        percent: 100
EOF
  fi
  port=$((20000 + RANDOM % 20000))
  start_server "$work/state"
  fs=$(findmnt -n -o FSTYPE -T "$work/state")
  hwm0=$(hwm "$pid") cpu0=$(cpu "$pid")

  netboot=$("$LOAD" --url "http://127.0.0.1:$port" --image img --version "$VERSION" \
    --machines "$N" --concurrency "$C" --phase netboot | grep '^phase=netboot')
  hwm1=$(hwm "$pid") cpu1=$(cpu "$pid")

  if [ -n "${PERF:-}" ] && [ "$run" = 1 ]; then
    perf record -q -F 499 -g -p "$pid" -o "$work/perf.data" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.5
  fi
  report=$("$LOAD" --url "http://127.0.0.1:$port" --image img --version "$VERSION" \
    --machines "$N" --concurrency "$C" --phase report | grep '^phase=report')
  hwm2=$(hwm "$pid") cpu2=$(cpu "$pid") rss2=$(rss "$pid")
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    perf_pid=
    perf_out=${TMPDIR:-/tmp}/lifecycle-reports.perf.txt
    perf report -i "$work/perf.data" --stdio --no-children -g none --percent-limit 1 \
      --sort dso,symbol 2>/dev/null | grep -v '^$' | head -80 >"$perf_out" || true
    echo "perf (flat profile of the server during the reports): $perf_out"
  fi

  # what the server recorded
  t0=$(now)
  curl -sf "http://127.0.0.1:$((port + 1))/lifecycle" -o "$work/lifecycle.json"
  snap_s=$(calc %.2f "$(now) - $t0")
  snap_mib=$(calc %.1f "$(stat -c %s "$work/lifecycle.json") / 1048576")
  healthy=$(jq --arg v "$VERSION" '[.machines[] | select(.phase.phase == "running"
      and .phase.source == "ram" and .phase.version == $v and .health.healthy == true
      and .health.version == $v and .diskless.good == $v and .diskless.trial == null)] | length' \
    "$work/lifecycle.json")
  if [ "$healthy" != "$N" ]; then
    echo "run $run: the server records $healthy healthy machines, not $N" >&2
    exit 1
  fi
  if [ -n "${ROLLOUT:-}" ]; then
    # the rollout counts; each machine's membership is in its own record
    counted=$(jq --arg v "$VERSION" '[.rollouts[] | select(.rollout.plan.version == $v)
        | .waves[].healthy] | add' "$work/lifecycle.json")
    members=$(jq --arg v "$VERSION" '[.machines[] | select(.rollouts.lab.version == $v
        and .rollouts.lab.outcome.outcome == "healthy")] | length' "$work/lifecycle.json")
    if [ "$counted" != "$N" ] || [ "$members" != "$N" ]; then
      echo "run $run: the rollout counts $counted healthy, $members machine records say so; not $N" >&2
      exit 1
    fi
    echo "run $run: rollout of $VERSION: $counted healthy counted, $members in machine records," \
      "$(stat -c %s "$work/state/lifecycle/rollouts/lab.json") bytes in rollouts/lab.json"
  fi
  files=$(find "$work/state/lifecycle/machines" -name '*.json' | wc -l)
  apparent=$(du -sb --apparent-size "$work/state/lifecycle" | cut -f1)
  blocks=$(du -sk "$work/state/lifecycle" | cut -f1)
  refused=$(grep -c 'refused' "$work/serve.log" || true)
  log_mib=$(calc %.1f "$(stat -c %s "$work/serve.log") / 1048576")

  # a restart reads every record back
  stop_server
  t0=$(now)
  start_server "$work/state"
  restart_s=$(calc %.2f "$(now) - $t0")
  hwm_restart=$(hwm "$pid")
  stop_server

  reports=$(field ok "$report")
  echo "run $run ($fs): netboot: $netboot"
  echo "run $run ($fs): report:  $report"
  printf '%s\n' "$run $(field per_s "$report") $(field p50_ms "$report") $(field p99_ms "$report") \
$(field max_ms "$report") $(field errors "$report") $(field per_s "$netboot") $(field p50_ms "$netboot") \
$(field p99_ms "$netboot") $(field errors "$netboot") $((hwm0 / 1024)) $((hwm1 / 1024)) $((hwm2 / 1024)) \
$((rss2 / 1024)) $(calc %.0f "($hwm2 - $hwm0) * 1024 / $N") $(calc %.2f "($cpu1 - $cpu0) * 1000 / $N") \
$(calc %.2f "($cpu2 - $cpu1) * 1000 / $reports") $healthy $files $(calc %.1f "$apparent / 1048576") \
$(calc %.1f "$blocks / 1024") $snap_s $snap_mib $restart_s $((hwm_restart / 1024)) $refused $log_mib" >>"$results"
  rm -rf "$work"
  work=
done

echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "reports: booted + healthy per machine ($((2 * N)) a run); netboots: GET /ipxe (N a run)"
echo "RSS: server VmHWM in MiB at rest / after netboots / after reports; VmRSS at the end; per machine: (HWM after - at rest) / N"
echo "CPU: server utime+stime per 1,000 requests; state: lifecycle/ (apparent MiB, allocated MiB)"
{
  echo "run reports/s p50_ms p99_ms max_ms err netboots/s nb_p50_ms nb_p99_ms nb_err HWM0 HWM1 HWM2 RSS B/machine cpu_s/1k_nb cpu_s/1k_rep healthy files state_MiB state_alloc_MiB /lifecycle_s /lifecycle_MiB restart_s restart_HWM refused log_MiB"
  cat "$results"
} | column -t
