#!/usr/bin/env bash
# Everything sparkvision needs on a fresh Debian/Ubuntu machine, in one command:
# Java 17 (Spark), Debian's Fashion-MNIST, Chromium (report and web-page tests),
# a virtual environment in .venv, and the package with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends "${packages[@]}" \
    || { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"; }
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, exactly the CPU build on local disk (a bare 'torch' would fetch a CUDA build).
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
# all: every extra (train, tiling, dicom, serve, demo, hf, mlflow; optional for users, their tests run here);
# dev: the test tools. A cluster's executors need only the core: see the README's "On your cluster".
.venv/bin/python -m pip install -q -c constraints.txt -e ".[all,dev]"
echo "sparkvision installed: .venv/bin/sparkvision --help"
