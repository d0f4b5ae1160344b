#!/usr/bin/env bash
# The main job on its embedded default: set up, then train DA2 on real handwritten digits
# with the EfficientNet-Lite0 ImageNet backbone on the CPU (no Jetson, GPU or network).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
device-agent demo "$@"
