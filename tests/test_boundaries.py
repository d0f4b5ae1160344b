"""The house's walls, checked from the source: every import of every module (those inside
functions too) is read with ``ast`` and held against the column rules.

- the torch column (model/, training/) stands on its own: no store/, api/, daemon/;
- the daemon column (api/, daemon/, store/) never imports torch or the torch column;
- the HTTP client (client.py and the client CLI commands) never imports the server (api/);
- a ground-floor module imports the standard library and the ground floor only.
"""
import ast
import os
import sys
import sysconfig
from importlib.util import find_spec
from typing import Iterator, List, Optional, Tuple

import pytest

PACKAGE = "device_agent"
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

TORCH_COLUMN = ("model", "training", "worker")
DAEMON_COLUMN = ("api", "daemon", "store", "capture")  # capture: issue 14
TORCH_LIBRARIES = ("torch", "torchvision")
CLIENT_MODULES = ("device_agent.client", "device_agent.cli", "device_agent.cli.client_commands",
                  "device_agent.cli.progress")
# Stdlib-only leaves both columns stand on (Python 3.6 syntax; both interpreters load them).
GROUND_FLOOR = ("device_agent", "device_agent.errors", "device_agent.atomic",
                "device_agent.imagefolder", "device_agent.jobspec", "device_agent.cpu_budget",
                "device_agent.artifacts", "device_agent.faults", "device_agent.manifest",
                "device_agent.procfs", "device_agent.protocol", "device_agent.protocol.framing",
                "device_agent.protocol.messages", "device_agent.protocol.peer",
                "device_agent.classmetrics")  # per-class results (issue 14)


def _module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-len(".py")]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(module: str) -> bool:
    return module == PACKAGE or os.path.isfile(
        os.path.join(os.path.dirname(PACKAGE_DIR), *module.split(".")) + "/__init__.py")


def imports_of(module: str, source: str) -> Iterator[Tuple[str, int]]:
    """(imported module, line) for every import in ``source``; ``from a import b`` yields
    ``a.b`` when that is a module of the package, else ``a``."""
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                yield _submodule_or(base, alias.name), node.lineno


def _submodule_or(base: str, name: str) -> str:
    candidate = base + "." + name
    path = os.path.join(os.path.dirname(PACKAGE_DIR), *candidate.split("."))
    return candidate if os.path.isfile(path + ".py") or os.path.isdir(path) else base


def _column(module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def _is_stdlib(name: str) -> bool:
    top = name.split(".")[0]
    if hasattr(sys, "stdlib_module_names"):  # 3.10+
        return top in sys.stdlib_module_names
    if top in sys.builtin_module_names:
        return True
    spec = find_spec(top)
    origin = getattr(spec, "origin", None) or ""
    return origin == "frozen" or (origin.startswith(sysconfig.get_paths()["stdlib"])
                                  and "site-packages" not in origin)


def violation(module: str, imported: str) -> Optional[str]:
    """Why ``module`` may not import ``imported``; None when it may."""
    mine, theirs = _column(module), _column(imported)
    top = imported.split(".")[0]
    if mine in ("model", "training") and theirs in DAEMON_COLUMN:
        return "the torch column imports the daemon's %s/" % theirs
    if mine in DAEMON_COLUMN and (top in TORCH_LIBRARIES or theirs in TORCH_COLUMN):
        return "the daemon column imports the torch side (%s)" % imported
    if module in CLIENT_MODULES and theirs == "api":
        return "the HTTP client imports the server (%s)" % imported
    if module in GROUND_FLOOR:
        if top == PACKAGE and imported not in GROUND_FLOOR:
            return "a ground-floor module imports %s, which is not ground floor" % imported
        if top != PACKAGE and not _is_stdlib(imported):
            return "a ground-floor module imports %s, which is not the standard library" % top
    return None


def check_source(module: str, source: str) -> List[str]:
    return ["%s:%d imports %s: %s" % (module, line, imported, why)
            for imported, line in imports_of(module, source)
            for why in [violation(module, imported)] if why]


def all_violations() -> List[str]:
    found = []
    for directory, _, files in os.walk(PACKAGE_DIR):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as handle:
                    found.extend(check_source(_module_name(path), handle.read()))
    return found


def test_the_tree_keeps_its_walls():
    assert all_violations() == []


def test_every_ground_floor_module_exists():
    for module in GROUND_FLOOR:
        path = os.path.join(os.path.dirname(PACKAGE_DIR), *module.split("."))
        assert os.path.isfile(path + ".py") or os.path.isfile(path + "/__init__.py"), module


@pytest.mark.parametrize("module, source, expected", [
    ("device_agent.training.fake", "from device_agent.store import atomic\n", "daemon's store"),
    ("device_agent.model.fake", "def f():\n    import device_agent.api.app\n", "daemon's api"),
    ("device_agent.training.fake", "from ..daemon import runner\n", "daemon's daemon"),
    ("device_agent.api.fake", "import torch.nn\n", "torch side"),
    ("device_agent.store.fake", "from device_agent.training import loop\n", "torch side"),
    ("device_agent.daemon.fake", "from ..worker import main\n", "torch side"),
    ("device_agent.cli.client_commands", "from device_agent.api.demo import X\n", "client"),
    ("device_agent.client", "import device_agent.api.schemas\n", "client"),
    ("device_agent.cpu_budget", "import numpy\n", "standard library"),
    ("device_agent.errors", "from device_agent.store import layout\n", "not ground floor"),
])
def test_a_violation_is_found(module, source, expected):
    found = check_source(module, source)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("module, source", [
    ("device_agent.training.fake", "import torch\nfrom device_agent import atomic, errors\n"),
    ("device_agent.api.fake", "from device_agent.store import db\nimport json\n"),
    ("device_agent.cpu_budget", "import json\nfrom typing import Dict\nfrom . import errors\n"),
    ("device_agent.client", "from device_agent.store.layout import DataPaths\n"),
])
def test_allowed_imports_pass(module, source):
    assert check_source(module, source) == []


def _trainer_constructions(path: str) -> List[int]:
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Trainer"]


def test_one_assembly_path_builds_every_trainer():
    """The worker, the ``train`` command and the benchmarks train through
    training/job.py's train_domain; nobody else puts a Trainer together."""
    root = os.path.dirname(PACKAGE_DIR)
    found = {}
    for top in (PACKAGE, "benchmarks"):
        for directory, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                path = os.path.join(directory, name)
                if name.endswith(".py") and _trainer_constructions(path):
                    found[os.path.relpath(path, root)] = _trainer_constructions(path)
    assert list(found) == [os.path.join(PACKAGE, "training", "job.py")], found
