"""The torch side must stay importable on the Jetson Nano's Python 3.6 (JetPack 4)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_ROOMS = ["device_agent/api", "device_agent/cli/serve_command.py"]  # Python 3.8+
PY36_ROOMS = ["device_agent/" + name
              for name in sorted(os.listdir(os.path.join(ROOT, "device_agent")))
              if name not in ("api", "__pycache__")]


def _vermin(target, paths, exclude=()):
    pytest.importorskip("vermin")
    run_vermin = "import sys; from vermin.main import main; sys.exit(main())"
    excluded = [arg for path in exclude for arg in ("--exclude-file", path)]
    return subprocess.run([sys.executable, "-c", run_vermin, "--target=%s-" % target,
                           "--violations", "--no-tips", "--eval-annotations"] + excluded + paths,
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)


def test_torch_side_syntax_floor_is_python_3_6():
    proc = _vermin("3.6", PY36_ROOMS, exclude=API_ROOMS[1:])
    assert proc.returncode == 0, proc.stdout


def test_api_side_syntax_floor_is_python_3_8():
    proc = _vermin("3.8", API_ROOMS)
    assert proc.returncode == 0, proc.stdout
