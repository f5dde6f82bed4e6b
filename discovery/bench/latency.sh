#!/bin/sh
# Discovery server latency on loopback: 1000 registrations from 100 concurrent clients,
# 1000 concurrent long-polls (10 per token) and 1000 long-polls on one token (fan-out).
# Prints p50/p99/max. Uses the file store (one fsync per change) in a temporary directory.
set -eu
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-discovery}"
exec cargo test --release -p cairn-discovery --test bench -- --ignored --nocapture
