#!/usr/bin/env bash
# Create (once) the development environment and print its path; scripts/setup.sh runs this
# and puts the result on PATH. Its own process, so `set -e` holds whatever the caller does.
# The virtual environment lives outside the checkout, in ~/.cache/device-agent/venv-KEY (or
# $DEVICE_AGENT_VENV_DIR), KEY a hash of what it installs, so a rerun on the same machine (or
# a fresh clone there) reuses it in seconds.
set -euo pipefail
trap 'echo "make-venv.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# The development machines' pip caps torch at these releases. On x86_64, PyPI's torch wheel
# brings NVIDIA's CUDA libraries (about 3.2 GB under site-packages/nvidia, plus 0.9 GB of
# triton) even on a CPU-only machine: the environment takes about 6 GB.
case "$(uname -m)" in
  x86_64) TORCH_PINS="torch==2.14.1 torchvision==0.29.1" ;;
  aarch64) TORCH_PINS="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH_PINS="torch torchvision" ;;
esac
EXTRAS="weights,demo,dev,bench,api,browser,export"
KEY="$( (cat "$ROOT/pyproject.toml"; echo "$TORCH_PINS $EXTRAS"; "$PYTHON" --version) \
  | sha256sum | cut -c1-12)"
VENV="${DEVICE_AGENT_VENV_DIR:-$HOME/.cache/device-agent/venv-$KEY}"
if [ ! -f "$VENV/.ready" ]; then
  echo "setting up $VENV (first run: a few minutes and about 6 GB)" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  # stdout carries the path alone: pip's output goes to stderr
  "$VENV/bin/pip" install -q --upgrade pip >&2
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $TORCH_PINS >&2
  "$VENV/bin/pip" install -q -e "${ROOT}[${EXTRAS}]" >&2
  touch "$VENV/.ready"
fi
# Point the editable install at this checkout (the cached venv may have served another).
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT" >/dev/null 2>&1 \
  || "$VENV/bin/pip" install -q --no-deps -e "$ROOT" >&2
echo "$VENV"
