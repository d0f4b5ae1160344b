#!/usr/bin/env bash
# The main job on its embedded default: set up, then start the daemon (SQLite in runs/demo,
# CPU, the EfficientNet-Lite0 ImageNet backbone) with a demo domain of real handwritten
# digits, follow its DA2 training, show its status and a prediction, and keep serving
# (Ctrl-C stops; --exit stops after the prediction). No Jetson, GPU or network needed.
# A second run resumes runs/demo and says so; delete that folder for a fresh start.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# The hints the demo prints name this environment's device-agent by its full path, so they
# work from any shell, without sourcing anything.
exec device-agent demo "$@"
