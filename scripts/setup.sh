#!/usr/bin/env bash
# Create (once) and activate the development environment; safe to source or run.
# The virtual environment lives outside the checkout, keyed by a hash of what it installs,
# so a rerun on the same machine (or a fresh clone there) reuses it in seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
case "$(uname -m)" in
  x86_64) TORCH_PINS="torch==2.14.1 torchvision==0.29.1" ;;  # these wheels lie on this disk
  aarch64) TORCH_PINS="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH_PINS="torch torchvision" ;;
esac
KEY="$( (cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh"; "$PYTHON" --version) | sha256sum | cut -c1-12)"
VENV="${DEVICE_AGENT_VENV:-$HOME/.cache/device-agent/venv-$KEY}"
if [ ! -f "$VENV/.ready" ]; then
  echo "setting up $VENV (first run: a few minutes)" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $TORCH_PINS
  "$VENV/bin/pip" install -q -e "$ROOT[weights,demo,dev,bench,api,browser]"
  touch "$VENV/.ready"
fi
# Point the editable install at this checkout (the cached venv may have served another).
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT" >/dev/null 2>&1 \
  || "$VENV/bin/pip" install -q --no-deps -e "$ROOT"
export PATH="$VENV/bin:$PATH"
export DEVICE_AGENT_VENV="$VENV"
