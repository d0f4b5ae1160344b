#!/usr/bin/env bash
# Create (once) and activate the development environment; safe to run or to source. Sourced
# (`source scripts/setup.sh`), it puts the environment's bin/ (device-agent, python, pytest,
# ruff) first on the calling shell's PATH, exports DEVICE_AGENT_VENV (its path), and leaves
# that shell's options as they were: the work runs in its own process
# (scripts/make-venv.sh, under `set -euo pipefail`), so a failure cannot close your terminal.
if DEVICE_AGENT_VENV="$(bash "$(dirname "${BASH_SOURCE[0]}")/make-venv.sh")"; then
  export DEVICE_AGENT_VENV
  export PATH="$DEVICE_AGENT_VENV/bin:$PATH"
else
  unset DEVICE_AGENT_VENV
  echo "setup.sh: the development environment could not be set up (see above)" >&2
  # `return` when sourced, `exit` when run
  # shellcheck disable=SC2317
  return 1 2>/dev/null || exit 1
fi
