"""The model repository's manifest (models/manifest.json) and its weights files: hashes
and fetching. Stdlib only, so the API can validate a backbone name without importing torch
and a connected machine can fetch weights without it."""
import hashlib
import importlib.util
import json
import os
import tempfile
import urllib.request
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from device_agent.errors import InvalidInput, UnknownName, WeightsMismatch, WeightsNotFound

MODELS_DIR_ENV = "DEVICE_AGENT_MODELS_DIR"
_REPO_MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "models")


def models_dir() -> str:
    return os.path.abspath(os.environ.get(MODELS_DIR_ENV) or _REPO_MODELS_DIR)


def load_manifest(directory: Optional[str] = None) -> Dict[str, dict]:
    path = os.path.join(directory or models_dir(), "manifest.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["backbones"]


def backbone_info(name: str) -> dict:
    manifest = load_manifest()
    if name not in manifest:
        raise UnknownName("unknown backbone %r; known: %s" % (name, ", ".join(sorted(manifest))))
    info = dict(manifest[name])
    info["name"] = name
    return info


class BackboneSpec(NamedTuple):
    """What a built backbone is, typed: its manifest entry's figures and the digest of the
    weights it was loaded from (``"random"`` for an untrained one). The backbone carries it
    (``Backbone.spec``); an adapter records ``name`` and ``weights_sha256``."""
    name: str
    builder: str
    input_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    weights_sha256: str
    da2_settings: Dict[str, object]  # DA2 settings this backbone sets apart from the defaults

    @classmethod
    def from_entry(cls, info: dict, weights_sha256: str) -> "BackboneSpec":
        """``info``: :func:`backbone_info`'s entry; a malformed one is a clear error here."""
        try:
            return cls(str(info["name"]), str(info["builder"]), int(info["input_size"]),
                       _triple(info["mean"]), _triple(info["std"]), weights_sha256,
                       dict(info.get("da2_settings") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("models/manifest.json: backbone %r is malformed: %r"
                               % (info.get("name"), exc)) from exc


def _triple(values: object) -> Tuple[float, float, float]:
    first, second, third = [float(v) for v in values]  # type: ignore
    return first, second, third


def _package_file(info: dict) -> Optional[str]:
    package = info.get("package")
    if not package:
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], info["package_path"])


def _torch_hub_checkpoints() -> str:
    """torch.hub's cache, found the way torch finds it ($TORCH_HOME, else the XDG cache)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "torch")
    return os.path.join(home, "hub", "checkpoints")


def weight_candidates(info: dict) -> List[str]:
    """Where a backbone's weights file is looked for, in order."""
    candidates = [os.path.join(models_dir(), "weights", info["weights_file"]),
                  os.path.join(_torch_hub_checkpoints(), info["weights_file"])]
    packaged = _package_file(info)
    if packaged:
        candidates.append(packaged)
    return candidates


def find_weights(info: dict) -> str:
    for path in weight_candidates(info):
        if os.path.isfile(path):
            return path
    raise WeightsNotFound(
        "weights for backbone %r not found: need %s in one of: %s. To provision: %s. "
        "(Use --weights random only for tests: it is an untrained network.)"
        % (info["name"], info["weights_file"], ", ".join(weight_candidates(info)),
           info.get("provision", "copy the file there")))


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(info: dict, path: str) -> str:
    """``path``'s SHA-256 must match the manifest's (or torchvision's 8-hex prefix)."""
    digest = sha256_of(path)
    expected = info.get("sha256") or info.get("sha256_prefix", "")
    if not expected or not digest.startswith(expected):
        raise WeightsMismatch("%s has SHA-256 %s, the manifest expects %s for %r"
                              % (path, digest, expected or "(no hash)", info["name"]))
    return digest


def fetch_weights(info: dict, directory: str,
                  urlopen: Callable = urllib.request.urlopen) -> str:
    """Download a backbone's weights into ``directory`` (on a connected machine), verify the
    hash, then move the file into place: a failed or tampered download leaves nothing."""
    if not info.get("url"):
        raise InvalidInput("%r has no download URL; provision it with: %s"
                           % (info["name"], info.get("provision", "see models/README.md")))
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, info["weights_file"])
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".fetch-")
    try:
        with os.fdopen(handle, "wb") as out, urlopen(info["url"], timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        check_digest(info, partial)
        os.rename(partial, target)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return target
