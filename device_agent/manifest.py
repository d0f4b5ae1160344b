"""The model repository's manifest (models/manifest.json); stdlib only, so the API can
validate a backbone name without importing torch."""
import json
import os
from typing import Dict, Optional

MODELS_DIR_ENV = "DEVICE_AGENT_MODELS_DIR"
_REPO_MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "models")


def models_dir() -> str:
    return os.path.abspath(os.environ.get(MODELS_DIR_ENV) or _REPO_MODELS_DIR)


def load_manifest(directory: Optional[str] = None) -> Dict[str, dict]:
    path = os.path.join(directory or models_dir(), "manifest.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["backbones"]
