#!/usr/bin/env bash
# The whole test suite (unit, Spark, cluster, browser). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARKVISION_CACHE="${SPARKVISION_CACHE:-$PWD/.cache/sparkvision}"
exec .venv/bin/python -m pytest "$@"
