#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the browser tests (the dashboard, /docs): Debian's
# chromium and chromium-driver. Installs them with apt-get when they are missing and this user
# is root, and says so before it does; not root: skipped (exit 77; in CI it fails).
# scripts/test.sh --no-browser (or DEVICE_AGENT_SKIP_BROWSER=1) skips this script and those tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  stage_unavailable install-browser "chromium / chromium-driver missing and apt-get needs \
root: the browser tests skip (as root: bash scripts/install-browser.sh)"
fi
echo "install-browser: installing Debian's chromium and chromium-driver with apt-get, as root" \
  "(a few hundred MB; skip the browser tests instead with scripts/test.sh --no-browser" \
  "or DEVICE_AGENT_SKIP_BROWSER=1)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium chromium-driver >/dev/null
echo "install-browser: $(chromium --version 2>/dev/null || echo chromium) installed" >&2
