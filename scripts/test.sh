#!/usr/bin/env bash
# The whole test suite (unit, Spark, cluster, browser). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARKVISION_CACHE="${SPARKVISION_CACHE:-$PWD/.cache/sparkvision}"
# Much of a Spark test is waiting (JVM start-up, py4j round trips, one small job after
# another), so the tests outside tests/cluster run in SPARKVISION_TEST_WORKERS pytest-xdist
# workers (default 2), a file per worker at a time, each worker with its own embedded Spark;
# artefacts such as the fitted model are built once per run (tests/run_cache.py).
# tests/cluster drives a Spark standalone cluster from its own driver, and a process holds
# one SparkSession: it runs as a second pytest process after the rest.
# Arguments naming test paths run just those, in one process.
for arg in "$@"; do
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
    exec .venv/bin/python -m pytest "$@"
  fi
done
workers="${SPARKVISION_TEST_WORKERS:-2}"
status=0
for selection in "--ignore=tests/cluster -n $workers --dist loadfile" "tests/cluster"; do
  rc=0
  # shellcheck disable=SC2086  # the selection is several words
  .venv/bin/python -m pytest $selection "$@" || rc=$?
  # 5 = nothing selected here (e.g. -k matched only the other half)
  if [[ $rc -ne 0 && $rc -ne 5 && $status -eq 0 ]]; then status=$rc; fi
done
exit "$status"
