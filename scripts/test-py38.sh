#!/usr/bin/env bash
# The API side on Python 3.8 with the pinned dependencies of deploy/requirements-api.txt (what
# JetPack 4's python3.8 and JetPack 5 install). The worker those tests spawn runs on another
# interpreter -- the development venv's, which has torch -- exactly as on JetPack 4, where the
# API runs on python3.8 and the worker on python3.6 (DEVICE_AGENT_WORKER_PYTHON).
# Skipped when no Python 3.8 is found. Usage: scripts/test-py38.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY38="${PY38:-}"
if [ -z "$PY38" ]; then
  for candidate in "$HOME"/.pyenv/versions/3.8*/bin/python3.8 "$(command -v python3.8 || true)"; do
    if [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
      PY38="$candidate"; break
    fi
  done
fi
if [ -z "$PY38" ]; then
  echo "skipping the Python 3.8 API stage: no python3.8 found" >&2
  exit 0
fi
WORKER_PYTHON="${DEVICE_AGENT_WORKER_PYTHON:-$(command -v python)}"
KEY="$( (cat "$ROOT/deploy/requirements-api.txt" "$0"; "$PY38" --version) | sha256sum | cut -c1-12)"
VENV="$HOME/.cache/device-agent/py38-$KEY"
if [ ! -f "$VENV/.ready" ]; then
  echo "setting up $VENV (first run)" >&2
  rm -rf "$VENV"
  "$PY38" -m venv "$VENV"
  LOG="$VENV.log"
  { "$VENV/bin/pip" install -q --upgrade "pip<25" \
    && "$VENV/bin/pip" install -q -r "$ROOT/deploy/requirements-api.txt" pytest pillow numpy; } \
    >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
  touch "$VENV/.ready"
fi
echo "API side on $("$VENV/bin/python" --version) with pinned deps; worker on $WORKER_PYTHON" >&2
cd "$ROOT"
DEVICE_AGENT_WORKER_PYTHON="$WORKER_PYTHON" PYTHONPATH="$ROOT" "$VENV/bin/python" -m pytest -q \
  -p no:cacheprovider tests/test_api.py tests/test_telemetry.py tests/test_store.py \
  tests/test_datasets.py tests/test_protocol.py "$@"
