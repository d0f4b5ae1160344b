"""Start and stop a real `device-agent serve` for the tests that talk to a live daemon:
uvicorn on a free loopback port, the real worker process (CPU, untrained backbone)."""
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=10) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(data_dir: str, token: str, timeout: float = 120, stderr=None, **env):
    """(process, base URL) of a daemon on ``data_dir``, once it is ready. ``env``: extra
    environment (DEVICE_AGENT_* settings, failpoints; a PYTHONPATH replaces the default, the
    repository root); ``stderr``: where its log goes."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_agent", "serve", "--data-dir", data_dir, "--port",
         str(port), "--token", token, "--worker-device", "cpu", "--worker-weights", "random"],
        cwd=ROOT, env=dict(os.environ, **dict({"PYTHONPATH": ROOT}, **env)), stderr=stderr)
    base = "http://127.0.0.1:%d" % port
    deadline = time.time() + timeout
    while not is_ready(base):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("the daemon did not become ready")
        time.sleep(0.3)
    return proc, base


def stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(60)
