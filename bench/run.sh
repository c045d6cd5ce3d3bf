#!/usr/bin/env bash
# Runs Plume's benchmark workloads (see bench/README.md) and writes
# bench/results/<date>-<machine>.md and .json. `make bench` calls this after
# building and installing the test dependencies.
#
#   BENCH_QUICK=1 bash bench/run.sh      # smoke run, about 2-4 minutes
#   BENCH_ROWS=200000 BENCH_SOURCES=postgres BENCH_WORKLOADS=drain bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")"
echo "bench: load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# The servers' temp dirs go where the tests put theirs; CI=true makes a
# missing server an error rather than a skip.
export CI="${CI:-true}"
go build -o "${TMPDIR:-/tmp}/plume-bench" .
exec "${TMPDIR:-/tmp}/plume-bench" "$@"
