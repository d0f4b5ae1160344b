#!/usr/bin/env bash
# The API side on Python 3.8 with the pinned dependencies of deploy/requirements-api.txt (what
# JetPack 4's python3.8 and JetPack 5 install). The worker those tests spawn runs on another
# interpreter -- the development venv's, which has torch -- exactly as on JetPack 4, where the
# API runs on python3.8 and the worker on python3.6 (DEVICE_AGENT_WORKER_PYTHON).
# Without a Python 3.8 interpreter this stage says where it looked and is skipped (exit 77; in
# CI it fails). Usage: scripts/test-py38.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
PY38="${PY38:-$(find_python 3.8 || true)}"
if [ -z "$PY38" ]; then
  stage_unavailable test-py38 "no Python 3.8 interpreter: $(where_python_was_sought 3.8)"
fi
WORKER_PYTHON="${DEVICE_AGENT_WORKER_PYTHON:-$(command -v python)}"
PIP_PIN="pip<25"
TEST_PACKAGES="pytest pillow numpy"
# capture (issue 14): OpenCV at JetPack 5's version (4.5.4), so the capture tests run on the
# API's own interpreter rather than skip
TEST_PACKAGES="$TEST_PACKAGES opencv-python-headless==4.5.4.60"
# keyed by what it installs (not by this script's text: a comment must not cost a rebuild)
KEY="$( (cat "$ROOT/deploy/requirements-api.txt"; echo "$PIP_PIN $TEST_PACKAGES"
         "$PY38" --version) | sha256sum | cut -c1-12)"
VENV="$HOME/.cache/device-agent/py38-$KEY"
if [ ! -f "$VENV/.ready" ]; then
  echo "setting up $VENV (first run)" >&2
  rm -rf "$VENV"
  "$PY38" -m venv "$VENV"
  LOG="$VENV.log"
  # shellcheck disable=SC2086
  { "$VENV/bin/pip" install -q --upgrade "$PIP_PIN" \
    && "$VENV/bin/pip" install -q -r "$ROOT/deploy/requirements-api.txt" $TEST_PACKAGES; } \
    >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
  touch "$VENV/.ready"
fi
echo "API side on $("$VENV/bin/python" --version) with pinned deps; worker on $WORKER_PYTHON" >&2
cd "$ROOT"
# tests/test_api_*.py: one file per router (the glob takes a new one in)
# tests/test_samples.py: the data loop's working set in the store (issue 14)
DEVICE_AGENT_WORKER_PYTHON="$WORKER_PYTHON" PYTHONPATH="$ROOT" "$VENV/bin/python" -m pytest -q \
  -p no:cacheprovider tests/test_api_*.py tests/test_telemetry.py tests/test_store.py \
  tests/test_datasets.py tests/test_protocol.py tests/test_docs_offline.py tests/test_client.py \
  tests/test_staying_up.py tests/test_bounded_input.py tests/test_boundaries.py \
  tests/test_jobspec.py tests/test_samples.py tests/test_capture_sources.py \
  tests/test_capture_sessions.py "$@"
