#!/usr/bin/env bash
# The test command: sets up the environments if needed, then lint + the whole suite on the
# development Python (the dashboard's browser test included: Debian's chromium is installed
# when missing), and the torch side again on Python 3.6 + torch 1.10 (JetPack 4).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
ruff check device_agent tests benchmarks
bash "$ROOT/scripts/install-browser.sh"
python -m pytest -q "$@"
bash "$ROOT/scripts/test-py36.sh" "$@"
