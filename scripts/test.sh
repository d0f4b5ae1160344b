#!/usr/bin/env bash
# The test command: sets up the environments if needed, then lint + the whole suite on the
# development Python (the dashboard's browser test included: Debian's chromium is installed
# when missing), the torch side again on Python 3.6 + torch 1.10 (JetPack 4), and the API
# side on Python 3.8 with its pinned dependencies (deploy/requirements-api.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
ruff check device_agent tests benchmarks
bash "$ROOT/scripts/install-browser.sh"
python -m pytest -q "$@"
bash "$ROOT/scripts/test-py36.sh" "$@"
bash "$ROOT/scripts/test-py38.sh" "$@"
