#!/usr/bin/env bash
# A second environment for nuq with torchvision and timm, in .venv-vision/ beside the core
# one (torchvision needs torch 2.14.1, a build of several GB; the core stays torch + numpy):
#   bash scripts/setup_vision.sh && .venv-vision/bin/python -m pytest -q tests/models/test_families.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${NUQ_VISION_VENV:-.venv-vision}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-vision] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torchvision, timm" >/dev/null 2>&1; then
  echo "[setup-vision] installing torch 2.14.1, torchvision 0.29.1, timm"
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" timm
fi
echo "[setup-vision] installing nuq"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
