"""The torch side must stay importable on the Jetson Nano's Python 3.6 (JetPack 4)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY36_ROOMS = ["device_agent/__init__.py", "device_agent/__main__.py", "device_agent/errors.py",
              "device_agent/demo.py", "device_agent/cli", "device_agent/model",
              "device_agent/training", "device_agent/store", "device_agent/protocol",
              "device_agent/worker"]


def test_torch_side_syntax_floor_is_python_3_6():
    pytest.importorskip("vermin")
    run_vermin = "import sys; from vermin.main import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", run_vermin, "--target=3.6-", "--violations",
                           "--no-tips", "--eval-annotations"] + PY36_ROOMS, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
