#!/usr/bin/env bash
# Set up nuq on a fresh Debian/Ubuntu machine with Python 3.10+ and pip:
# the Fashion-MNIST IDX files (Debian package), a CPU build of PyTorch, nuq itself.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${NUQ_DATA_DIR:-}" ]; then
  echo "[setup] installing Fashion-MNIST (dataset-fashion-mnist)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing PyTorch (CPU build)"
  "$PY" -m pip install -q "torch==2.13.0"
fi
echo "[setup] installing nuq"
"$PY" -m pip install -q -e ".[dev]"
