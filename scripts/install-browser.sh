#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the dashboard's browser test (Debian packages).
# Installs them when missing and this user may (root with apt-get); otherwise says so: the
# test then skips on a developer machine and fails in CI.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "note: chromium / chromium-driver missing and not root: the browser test will skip" >&2
fi
