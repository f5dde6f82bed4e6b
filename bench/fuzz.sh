#!/usr/bin/env bash
# Fuzzing: every cargo-fuzz target in fuzz/ (one per parser of outside input, see docs/fuzzing.md)
# runs for a bounded time, and the figures are printed per target: runs executed, executions per
# second (over libFuzzer's own time, builds excluded), coverage (libFuzzer's cov and ft on its last line), corpus size, and whether it found a
# crash (panic, failed assertion, out of memory, timeout). Exit 1 when any target found one; the
# input is then in fuzz/artifacts/TARGET/ and the log in fuzz/logs/TARGET.log.
#
# Usage: nice -n 10 bash bench/fuzz.sh [TARGET...]   (default: every target)
#   FUZZ_SECONDS  time per target (default 60)
#   FUZZ_RSS_MB   libFuzzer's -rss_limit_mb and -malloc_limit_mb (default 2048)
#   FUZZ_TIMEOUT  seconds one input may take before it counts as a hang (default 10)
# Installs cargo-fuzz if missing. Toolchain: the rustup `nightly` (cargo-fuzz needs -Z flags for its
# sanitizer build); without one, the stable toolchain with RUSTC_BOOTSTRAP=1. The working corpus is
# fuzz/corpus/TARGET/ (seeded by fuzz/seeds.sh, kept between runs, not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
rss=${FUZZ_RSS_MB:-2048}
hang=${FUZZ_TIMEOUT:-10}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    toolchain="nightly ($(rustup run nightly rustc --version))"
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    toolchain="stable with RUSTC_BOOTSTRAP=1 ($(rustc --version))"
fi

# Longest input per target: packets fit a datagram; texts are bounded well above real files (the
# config-drive metadata a little above its 64 KiB limit, so the limit itself is exercised).
max_len() {
    case $1 in
        tftp_packet | dhcp_packet) echo 1500 ;;
        config_drive_metadata) echo 70000 ;;
        cloud_config | inventory | update_manifest) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && "${fuzz[@]}" list)
fi
bash fuzz/seeds.sh >/dev/null
mkdir -p fuzz/logs
echo "toolchain: $toolchain; ${seconds}s per target; targets: ${targets[*]}"
(cd fuzz && "${fuzz[@]}" build)

results=()
failed=0
for t in "${targets[@]}"; do
    log=fuzz/logs/$t.log
    mkdir -p "fuzz/artifacts/$t"
    before=$(ls "fuzz/artifacts/$t" | wc -l)
    start=$(date +%s)
    set +e
    (cd fuzz && "${fuzz[@]}" run "$t" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss" -malloc_limit_mb="$rss" \
        -timeout="$hang" -max_len="$(max_len "$t")" -print_final_stats=1) >"$log" 2>&1
    rc=$?
    set -e
    took=$(sed -E -n 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -1)
    [ -n "$took" ] || took=$(($(date +%s) - start))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    [ -n "$runs" ] || runs=$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$last")
    cov=$(sed -E -n 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -E -n 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
    after=$(ls "fuzz/artifacts/$t" | wc -l)
    if [ "$rc" -eq 0 ] && [ "$after" -eq "$before" ]; then
        found="none"
    else
        failed=1
        found="FOUND: $(ls -t "fuzz/artifacts/$t" | head -1) (exit $rc, see $log)"
    fi
    results+=("$(printf '%-22s %6ss %12s %8s %7s %7s %6s  %s' "$t" "$took" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$found")")
    echo "${results[-1]}"
done
# The inventory target's fixture folders, of processes that have ended.
for d in "${TMPDIR:-/tmp}"/cairn-fuzz-inventory-*; do
    if [ -d "$d" ] && [ ! -d "/proc/${d##*-}" ]; then rm -rf "$d"; fi
done

echo
printf '%-22s %7s %12s %8s %7s %7s %6s  %s\n' target time runs exec/s cov ft corpus crash
printf '%s\n' "${results[@]}"
exit "$failed"
