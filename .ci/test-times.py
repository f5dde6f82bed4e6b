#!/usr/bin/env python3
"""Pass `cargo test` output through unchanged and, at the end, print how long
each test binary ran and the 15 slowest tests.

libtest on stable Rust does not time single tests, so a test's figure is the
time from its binary's start to the line that reports it: exact for a binary
with one test (every VM test), an upper bound where tests run side by side.
"""

import os
import re
import sys
import time

RUNNING = re.compile(r"^\s*Running (?:unittests )?(\S+) \((.+)\)")
DOCTESTS = re.compile(r"^\s*Doc-tests (\S+)")
RESULT = re.compile(r"^test (\S+)(?: - .*)? \.\.\. (ok|FAILED|ignored.*)$")
SUMMARY = re.compile(r"^test result: ")
COUNTS = re.compile(r"(\d+) (passed|failed|ignored)")

start = time.monotonic()
binary = None
binary_start = start
binaries = []  # (seconds, name)
tests = []  # (seconds, binary, test, outcome)
totals = {"passed": 0, "failed": 0, "ignored": 0}


def close_binary(now):
    global binary
    if binary is not None:
        binaries.append((now - binary_start, binary))
    binary = None


for line in sys.stdin:
    sys.stdout.write(line)
    sys.stdout.flush()
    now = time.monotonic()
    text = line.rstrip("\n")
    m = RUNNING.match(text)
    d = DOCTESTS.match(text)
    if m or d:
        close_binary(now)
        if m:
            binary = m.group(2).rsplit("/", 1)[-1]
            binary = re.sub(r"-[0-9a-f]{16}$", "", binary) + " (" + m.group(1) + ")"
        else:
            binary = "doctests " + d.group(1)
        binary_start = now
        continue
    m = RESULT.match(text)
    if m and binary is not None and not m.group(2).startswith("ignored"):
        tests.append((now - binary_start, binary, m.group(1), m.group(2)))
        continue
    if SUMMARY.match(text):
        for n, kind in COUNTS.findall(text):
            totals[kind] += int(n)
        close_binary(now)

close_binary(time.monotonic())
total = time.monotonic() - start

out = sys.stdout
out.write("\n== test binaries by time (total %.0f s)\n" % total)
for secs, name in sorted(binaries, reverse=True):
    if secs >= 1:
        out.write("%8.1f s  %s\n" % (secs, name))
out.write("\n== the 15 slowest tests (time from their binary's start to their result)\n")
for secs, name, test, outcome in sorted(tests, reverse=True)[:15]:
    out.write("%8.1f s  %s  %s%s\n" % (secs, name, test, "" if outcome == "ok" else "  " + outcome))

# One closing line for the whole run (every binary's "test result" added
# up), written where .ci/run prints it last.
line = "tests: %d passed, %d failed, %d skipped\n" % (
    totals["passed"],
    totals["failed"],
    totals["ignored"],
)
out.write("\n" + line)
summary = os.environ.get("CI_SUMMARY")
if summary:
    with open(summary, "w") as f:
        f.write(line)
