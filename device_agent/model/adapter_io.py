"""A domain saved apart from its backbone, PEFT-style: adapter_config.json + safetensors.

Both files are written atomically, weights first; the config, written last, records the
weights file's SHA-256, so a crash between the two writes leaves an artifact that fails
to load loudly instead of loading the wrong tensors. Loading checks that the backbone
matches (name and weights hash) and that every tensor's name and shape is what the
method builds. Nothing is ever unpickled.
"""
import hashlib
import json
import os
from typing import Dict, List, Optional

import torch

from device_agent import __version__, artifacts, atomic
from device_agent.artifacts import (
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    MAX_CONFIG_BYTES,
    WEIGHTS_NAME,
)
from device_agent.errors import ArtifactError, InvalidInput, WeightsMismatch
from device_agent.jobspec import JobReport
from device_agent.model import safetensors_io
from device_agent.model.adapters import LEGACY_SETTINGS
from device_agent.model.network import AdaptedNet, DomainModule


def save_domain(net: AdaptedNet, name: str, directory: str, class_names: List[str],
                input_size: int, metrics: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Write domain ``name`` of ``net`` into ``directory``; returns the config written. The
    metrics always carry ``adapter_bytes``, so the adapter names its size wherever it goes
    (an imported adapter's summary is read from them)."""
    domain = net.set_active(name)
    if len(class_names) != domain.head.classes:
        raise ArtifactError("%d class names for a %d-class head"
                            % (len(class_names), domain.head.classes))
    blob = safetensors_io.dumps(domain.state_dict(), {"format": FORMAT})
    spec = net.backbone_spec
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "agent_version": __version__,
        "backbone": {"name": spec.name, "weights_sha256": spec.weights_sha256},
        "method": domain.method.name, "adapter_settings": domain.adapter_settings,
        "train_bn": domain.train_bn, "dropout": domain.head.dropout,
        "class_names": list(class_names), "input_size": int(input_size),
        "mean": list(spec.mean), "std": list(spec.std),
        "metrics": dict(metrics or {}, adapter_bytes=len(blob)),
        "weights_file": WEIGHTS_NAME, "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_bytes": len(blob),
    }
    atomic.write_bytes(os.path.join(directory, WEIGHTS_NAME), blob)
    atomic.write_json(os.path.join(directory, CONFIG_NAME), config)
    return config


def save_report(net: AdaptedNet, name: str, directory: str, report: JobReport) -> None:
    """Save the trained domain with its job's report as the metrics; the report gets the
    adapter's size."""
    config = save_domain(net, name, directory, report.classes, report.resolution,
                         report.metrics())
    report.adapter_bytes = int(config["weights_bytes"])


def read_config(directory: str) -> Dict[str, object]:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ArtifactError("no %s in %s" % (CONFIG_NAME, directory))
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ArtifactError("%s is larger than %d bytes" % (CONFIG_NAME, MAX_CONFIG_BYTES))
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except ValueError as exc:
        raise ArtifactError("%s is not valid JSON: %s" % (CONFIG_NAME, exc)) from exc
    _check_config(config)
    return config


def _check_config(config: object) -> None:
    """The API checked an import already; a file on disk is checked again (the same rules,
    :mod:`device_agent.artifacts`) before any value of it sizes an allocation."""
    artifacts.check_config(config)


def load_domain(net: AdaptedNet, directory: str, name: str,
                check_backbone: bool = True) -> Dict[str, object]:
    """Add the domain saved in ``directory`` to ``net`` as ``name``; returns its config."""
    config = read_config(directory)
    backbone = config["backbone"]
    spec = net.backbone_spec
    if backbone.get("name") != spec.name:
        raise WeightsMismatch("adapter was trained on backbone %r, this one is %r"
                              % (backbone.get("name"), spec.name))
    if check_backbone and backbone.get("weights_sha256") != spec.weights_sha256:
        raise WeightsMismatch("adapter was trained on backbone weights %s, these are %s"
                              % (backbone.get("weights_sha256"), spec.weights_sha256))
    tensors = _read_weights(directory, config["weights_sha256"])
    try:
        settings = config["adapter_settings"]
        if settings:  # da2: a setting missing from an older file has its old value
            settings = dict(LEGACY_SETTINGS, **settings)
        domain = DomainModule(net.backbone, config["method"], len(config["class_names"]),
                              settings, bool(config.get("train_bn", False)),
                              float(config.get("dropout", 0.2)))
    except (ValueError, InvalidInput) as exc:
        raise ArtifactError("adapter config is invalid: %s" % exc) from exc
    _load_strict(domain, tensors)
    net.add_domain(name, domain.eval())
    return config


def _read_weights(directory: str, expected_sha256: str) -> Dict[str, torch.Tensor]:
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise ArtifactError("no %s in %s" % (WEIGHTS_NAME, directory))
    with open(path, "rb") as handle:
        blob = handle.read()
    if hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise ArtifactError("%s does not match the hash in %s" % (WEIGHTS_NAME, CONFIG_NAME))
    try:
        tensors, _ = safetensors_io.loads(blob)
    except safetensors_io.SafetensorsError as exc:
        raise ArtifactError("%s is malformed: %s" % (WEIGHTS_NAME, exc)) from exc
    return tensors


def _load_strict(domain: DomainModule, tensors: Dict[str, torch.Tensor]) -> None:
    expected = domain.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ArtifactError("adapter tensors do not fit method %r: missing %s, unexpected %s"
                            % (domain.method.name, missing[:3], unexpected[:3]))
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape) or value.dtype != expected[key].dtype:
            want = expected[key]
            raise ArtifactError("tensor %r is %s %s, expected %s %s" % (
                key, value.dtype, tuple(value.shape), want.dtype, tuple(want.shape)))
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArtifactError("tensor %r holds NaN or infinite values" % key)
    domain.load_state_dict(tensors)
