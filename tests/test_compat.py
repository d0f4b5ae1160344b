"""The torch side must stay importable on the Jetson Nano's Python 3.6 (JetPack 4)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Everything so far runs on 3.6 (the worker's interpreter on JetPack 4); the API room
# (FastAPI, Python 3.8+) will be the one exception.
PY36_ROOMS = ["device_agent"]


def test_torch_side_syntax_floor_is_python_3_6():
    pytest.importorskip("vermin")
    run_vermin = "import sys; from vermin.main import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", run_vermin, "--target=3.6-", "--violations",
                           "--no-tips", "--eval-annotations"] + PY36_ROOMS, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
