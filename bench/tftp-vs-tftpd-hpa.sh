#!/usr/bin/env bash
# cairn-tftp against Debian's tftpd-hpa on loopback.
#  1. Throughput: a 64 MiB file fetched with the same client (atftp) and the same options
#     (blksize 512, 1468, 8192; windowsize 1 and 16) from each server; median of RUNS (default 3)
#     runs, alternating servers (rotating their order) so machine load affects all alike. The ratios are the median of
#     the per-round ratios (each round fetches from all servers back to back), which a load
#     spike lasting a few seconds disturbs less than a ratio of medians. tftpd-hpa 5.2 does not know
#     windowsize (RFC 7440): it leaves the option out of its OACK and atftp falls back to 1.
#     cairn caps windowsize at 64 KiB in flight (8192 x 16 is granted as 8 x 8192).
#     Also the server's CPU time per file (user + system from /proc/PID/stat, 10 ms ticks), which
#     load on the machine disturbs less than lockstep throughput (on loopback mostly scheduling
#     latency). tftpd-hpa's master ignores SIGCHLD, so its children's time never reaches its
#     cutime: a sampler reads each child's stat every 20 ms and keeps the last value (a lower
#     bound, up to 20 ms short per file); the same sampler runs during cairn's fetches.
#     cairn runs twice: on tokio's multi-thread runtime (as inside `cairn serve`) and on a
#     current-thread runtime (SERVE_DIR_CURRENT_THREAD=1). Transfers run on their own threads
#     with blocking sockets, so the runtime only handles requests: both should be alike.
#  2. Concurrency: CLIENTS (default 200) curl processes started at once fetch a 10 MiB file
#     (blksize 1468) from each server: how many got the exact file, total wall time, and the
#     server's peak RSS (sum over its processes: tftpd-hpa forks one child per transfer) and
#     peak tasks (threads of the cairn process; processes of tftpd-hpa).
# Servers: cairn's `serve_dir` example (release build) and `in.tftpd -L -s DIR -a 127.0.0.1:PORT`
# in the foreground. Usage: bash bench/tftp-vs-tftpd-hpa.sh  (as root; installs atftp, curl and
# tftpd-hpa if missing). Ports: CAIRN_PORT (16901), HPA_PORT (16902), CAIRN1_PORT (16903).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/tmp/cairn-bench-tftp}
runs=${RUNS:-3}
clients=${CLIENTS:-200}
cport=${CAIRN_PORT:-16901}
hport=${HPA_PORT:-16902}
c1port=${CAIRN1_PORT:-16903}
for p in atftp curl tftpd-hpa; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends "$p"; }
done

cargo build --release -q -p cairn-tftp --example serve_dir
serve_dir=${CARGO_TARGET_DIR:-target}/release/examples/serve_dir

rm -rf "$work"
mkdir -p "$work/root" "$work/out"
chmod 755 "$work" "$work/root"
head -c $((64 << 20)) /dev/urandom > "$work/root/big.bin"
head -c $((10 << 20)) /dev/urandom > "$work/root/ten.bin"
chmod 644 "$work/root/"*

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$serve_dir" "127.0.0.1:$cport" "$work/root" > "$work/cairn.log" 2>&1 &
cairn_pid=$!
pids+=("$cairn_pid")
SERVE_DIR_CURRENT_THREAD=1 "$serve_dir" "127.0.0.1:$c1port" "$work/root" > "$work/cairn1.log" 2>&1 &
cairn1_pid=$!
pids+=("$cairn1_pid")
# tftpd-hpa: foreground (-L), chroot to the root (-s), runs as nobody, any blksize up to 65464.
in.tftpd -L -s "$work/root" -a "127.0.0.1:$hport" > "$work/hpa.log" 2>&1 &
hpa_pid=$!
pids+=("$hpa_pid")
sleep 0.5
kill -0 "$cairn_pid" && kill -0 "$cairn1_pid" && kill -0 "$hpa_pid"

now() { date +%s.%N; }
cpu_ticks() { # utime + stime of a process (all its threads), in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
sample_children() { # PID FILE: every 20 ms, a "child ticks" line per child process of PID
  local c
  while :; do
    for c in $(pgrep -P "$1" || true); do awk -v c="$c" '{print c, $14 + $15}' "/proc/$c/stat" 2>/dev/null || true; done
    sleep 0.02
  done > "$2"
}
children_ticks() { # FILE: sum over children of the last ticks seen
  awk '{m[$1] = $2} END {s = 0; for (c in m) s += m[c]; print s}' "$1"
}
pid_of() { case $1 in cairn) echo "$cairn_pid" ;; cairn1) echo "$cairn1_pid" ;; hpa) echo "$hpa_pid" ;; esac; }
tck=$(getconf CLK_TCK)
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

fetch_atftp() { # port blksize windowsize out
  local opts=(--option "blksize $2")
  [ "$3" -gt 1 ] && opts+=(--option "windowsize $3")
  atftp "${opts[@]}" -g -r big.bin -l "$4" 127.0.0.1 "$1" > /dev/null 2>&1
}

echo "cairn-tftp vs tftpd-hpa $(dpkg-query -W -f='${Version}' tftpd-hpa), atftp $(dpkg-query -W -f='${Version}' atftp), 64 MiB file, loopback, median of $runs runs, $(nproc) CPUs"
printf '%-8s %-6s %12s %12s %12s %8s %8s %10s %10s %10s\n' blksize window "cairn MiB/s" "cairn1 MiB/s" "hpa MiB/s" ratio ratio1 "cairn CPUs" "cairn1 CPUs" "hpa CPUs"
servers=(cairn cairn1 hpa)
port_of() { case $1 in cairn) echo "$cport" ;; cairn1) echo "$c1port" ;; hpa) echo "$hport" ;; esac; }
for bs in 512 1468 8192; do
  for win in 1 16; do
    ct=(); c1t=(); ht=(); cc=(); c1c=(); hc=(); rr=(); rr1=()
    for ((i = 0; i < runs; i++)); do
      for j in 0 1 2; do # the order rotates each round
        srv=${servers[$(((i + j) % 3))]}
        port=$(port_of $srv)
        out=/dev/null; [ "$i" = 0 ] && out="$work/out/$srv-$bs-$win"
        pid=$(pid_of $srv)
        k0=$(cpu_ticks "$pid")
        sample_children "$pid" "$work/children" &
        sampler=$!
        t0=$(now); fetch_atftp "$port" "$bs" "$win" "$out"; t1=$(now)
        sleep 0.05
        kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
        k=$(($(cpu_ticks "$pid") - k0 + $(children_ticks "$work/children")))
        if [ "$i" = 0 ]; then
          cmp -s "$out" "$work/root/big.bin" || { echo "$srv blksize $bs window $win: file differs" >&2; exit 1; }
          rm -f "$out"
        fi
        d=$(echo "$t1 - $t0" | bc -l)
        case $srv in cairn) ct+=("$d"); cc+=("$k") ;; cairn1) c1t+=("$d"); c1c+=("$k") ;; hpa) ht+=("$d"); hc+=("$k") ;; esac
      done
      rr+=("$(echo "${ht[$i]} / ${ct[$i]}" | bc -l)"); rr1+=("$(echo "${ht[$i]} / ${c1t[$i]}" | bc -l)")
    done
    cm=$(printf '%s\n' "${ct[@]}" | median); c1m=$(printf '%s\n' "${c1t[@]}" | median); hm=$(printf '%s\n' "${ht[@]}" | median)
    ccm=$(printf '%s\n' "${cc[@]}" | median); c1cm=$(printf '%s\n' "${c1c[@]}" | median); hcm=$(printf '%s\n' "${hc[@]}" | median)
    printf '%-8s %-6s %12.1f %12.1f %12.1f %7.2fx %7.2fx %10.2f %10.2f %10.2f\n' "$bs" "$win" "$(echo "64 / $cm" | bc -l)" "$(echo "64 / $c1m" | bc -l)" "$(echo "64 / $hm" | bc -l)" "$(printf '%s\n' "${rr[@]}" | median)" "$(printf '%s\n' "${rr1[@]}" | median)" \
      "$(echo "$ccm / $tck" | bc -l)" "$(echo "$c1cm / $tck" | bc -l)" "$(echo "$hcm / $tck" | bc -l)"
  done
done
echo "(cairn: multi-thread runtime; cairn1: current-thread runtime; ratio = cairn / tftpd-hpa throughput,"
echo " ratio1 = cairn1 / tftpd-hpa, each the median of the per-round ratios; tftpd-hpa ignores windowsize, so its window-16 rows run with 1;"
echo " CPUs = server CPU seconds (user + system) per 64 MiB file, median)"

usage() { # "RSS_KB TASKS": VmRSS and threads summed over a process and its children, in one pass
  # (one awk per child was too slow under load: 200 forks per sample missed the peak)
  local p files=("/proc/$1/status")
  for p in $(pgrep -P "$1" || true); do files+=("/proc/$p/status"); done
  cat "${files[@]}" 2>/dev/null | awk '/^VmRSS/ {r += $2} /^Threads/ {t += $2} END {print r + 0, t + 0}'
}

echo
printf '%-7s %8s %10s %10s %14s %11s\n' server clients complete "time s" "peak RSS MiB" "peak tasks"
for srv in cairn cairn1 hpa; do
  port=$(port_of $srv)
  case $srv in cairn) pid=$cairn_pid ;; cairn1) pid=$cairn1_pid ;; hpa) pid=$hpa_pid ;; esac
  rm -f "$work/out/"*
  peak=0
  peakt=0
  t0=$(now)
  cpids=()
  for ((i = 0; i < clients; i++)); do
    curl -s --max-time 600 --tftp-blksize 1468 -o "$work/out/$i" "tftp://127.0.0.1:$port/ten.bin" &
    cpids+=($!)
  done
  while :; do
    read -r r t < <(usage "$pid")
    [ "$r" -gt "$peak" ] && peak=$r
    [ "$t" -gt "$peakt" ] && peakt=$t
    running=0
    for c in "${cpids[@]}"; do kill -0 "$c" 2>/dev/null && { running=1; break; }; done
    [ $running = 0 ] && break
    sleep 0.05
  done
  wait "${cpids[@]}" 2>/dev/null || true
  t1=$(now)
  ok=0
  for ((i = 0; i < clients; i++)); do cmp -s "$work/out/$i" "$work/root/ten.bin" && ok=$((ok + 1)); done
  printf '%-7s %8d %10d %10.1f %14.1f %11d\n' "$srv" "$clients" "$ok" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$peak / 1024" | bc -l)" "$peakt"
done
for p in "$cairn_pid" "$cairn1_pid"; do
  if [ -r "/proc/$p/status" ]; then echo "cairn serve_dir pid $p VmHWM (peak RSS over the whole run): $(awk '/^VmHWM/ {print $2 / 1024 " MiB"}' "/proc/$p/status")"; fi
done
