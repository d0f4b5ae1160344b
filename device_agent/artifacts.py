"""An adapter artifact's files and the rules an imported one must pass (stdlib only, Python
3.6 syntax: the API checks an import with these before the worker sees it, and the worker
checks again before it loads one; neither trusts the other's input).

Every bound here exists because an unchecked value drove an allocation or broke a reader
later (issue 16, item 6): ``max_channels`` 8192 grew the worker by 1 GB, 300k class names by
600 MB, a string ``val_top1`` broke every domain listing, ``input_size`` 0 or a zero ``std``
broke every prediction.
"""
import hashlib
import json
import math
import re
import struct
import unicodedata
from typing import Dict, Optional

from device_agent.errors import ArtifactError, PayloadTooLarge

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FILES = (CONFIG_NAME, WEIGHTS_NAME)

FORMAT = "device-agent-adapter"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 512 << 20      # a fine-tuned ResNet-50 is ~100 MB
MAX_WEIGHTS_HEADER_BYTES = 1 << 20
MAX_TENSORS = 4096
MAX_CLASSES = 4096
MAX_CLASS_NAME_CHARS = 255  # a directory name's most, in ASCII
INPUT_SIZE_RANGE = (16, 1024)
MAX_METRICS_BYTES = 64 << 10
# Adapter settings the worker knows, with the range an import may use (training defaults
# sit well inside: max_channels 128, reduction 4, pool 4, min_cells 4).
INT_SETTINGS = {"reduction": (1, 64), "min_channels": (1, 512), "max_channels": (1, 512),
                "pool": (1, 64), "min_branch_stride": (1, 1024), "min_cells": (0, 64),
                "first_block": (0, 256)}  # adapter depth: a backbone has well under 256 blocks
STR_SETTINGS = ("attention", "upsample")
BOOL_SETTINGS = ("train_biases",)
# Metrics the API, /metrics and the dashboard read as numbers.
NUMERIC_METRICS = ("val_top1", "val_top5", "adapter_bytes", "trainable_params", "epochs",
                   "images_per_sec", "peak_rss_bytes", "saved_activation_bytes",
                   "peak_rss_mb", "saved_activation_mb")  # the last two: older adapters
CONFIG_KEYS = {"format", "format_version", "agent_version", "backbone", "method",
               "adapter_settings", "train_bn", "dropout", "class_names", "input_size", "mean",
               "std", "metrics", "weights_file", "weights_sha256", "weights_bytes"}
# safetensors dtype -> bytes per element
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1}
_SHORT_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def unsafe_character(text: str) -> Optional[str]:
    """The first control, format (bidi overrides, zero-width) or separator character in
    ``text`` as ``U+XXXX``, or None: such names print misleadingly in logs and terminals."""
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            return "U+%04X" % ord(char)
    return None


def check_class_name(name: object) -> str:
    """A class name as a directory name or label: printable, short, no path characters."""
    if not isinstance(name, str) or not name or len(name) > MAX_CLASS_NAME_CHARS:
        raise ArtifactError("class names are 1-%d characters" % MAX_CLASS_NAME_CHARS)
    bad = unsafe_character(name)
    if bad or "/" in name or "\\" in name or name in (".", ".."):
        raise ArtifactError("class name %r has an unusable character%s"
                            % (name[:40], " (%s)" % bad if bad else ""))
    return name


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _all_finite(value: object, depth: int = 0) -> bool:
    """No NaN or infinity anywhere in a JSON value (nesting bounded)."""
    if depth > 8:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v, depth + 1) for v in value)
    return True


def _fail(field: str, rule: str) -> None:
    raise ArtifactError("adapter config field %r %s" % (field, rule))


def parse_config(blob: bytes) -> Dict[str, object]:
    """``adapter_config.json``'s bytes -> the checked config (:func:`check_config`)."""
    if len(blob) > MAX_CONFIG_BYTES:
        raise ArtifactError("%s is larger than %d bytes" % (CONFIG_NAME, MAX_CONFIG_BYTES))
    try:
        config = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError("%s is not valid JSON: %s" % (CONFIG_NAME, exc)) from exc
    return check_config(config)


def check_config(config: object) -> Dict[str, object]:
    """``config`` if every field has its type and lies within its bounds; else ArtifactError."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ArtifactError("not a device-agent adapter config")
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError("adapter format version %r; this agent reads %d"
                            % (config.get("format_version"), FORMAT_VERSION))
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ArtifactError("adapter config has unknown fields: %s" % ", ".join(unknown[:5]))
    backbone = config.get("backbone")
    if not isinstance(backbone, dict) or set(backbone) != {"name", "weights_sha256"}:
        _fail("backbone", "must be {name, weights_sha256}")
    if not isinstance(backbone["name"], str) or not _SHORT_NAME.match(backbone["name"]):
        _fail("backbone.name", "must be a short name")
    if not (backbone["weights_sha256"] is None or isinstance(backbone["weights_sha256"], str)
            and len(backbone["weights_sha256"]) <= 128):
        _fail("backbone.weights_sha256", "must be a hash")
    if not isinstance(config.get("method"), str) or not _SHORT_NAME.match(config["method"]):
        _fail("method", "must be a short name")
    if not isinstance(config.get("agent_version", ""), str) or \
            len(config.get("agent_version", "")) > 64:
        _fail("agent_version", "must be a short string")
    _check_classes(config.get("class_names"))
    size = config.get("input_size")
    if not _int(size) or not INPUT_SIZE_RANGE[0] <= size <= INPUT_SIZE_RANGE[1]:
        _fail("input_size", "must be an integer in [%d, %d]" % INPUT_SIZE_RANGE)
    for field in ("mean", "std"):
        values = config.get(field)
        if not isinstance(values, list) or len(values) != 3 or \
                not all(_finite(v) and abs(v) <= 1e3 for v in values):
            _fail(field, "must be 3 finite numbers")
    if not all(v > 1e-6 for v in config["std"]):
        _fail("std", "must be positive")
    if not isinstance(config.get("train_bn", False), bool):
        _fail("train_bn", "must be true or false")
    dropout = config.get("dropout", 0.2)
    if not _finite(dropout) or not 0 <= dropout < 1:
        _fail("dropout", "must be in [0, 1)")
    _check_settings(config.get("adapter_settings"))
    _check_metrics(config.get("metrics", {}))
    if not isinstance(config.get("weights_sha256"), str) or \
            not _SHA256.match(config["weights_sha256"]):
        _fail("weights_sha256", "must be a SHA-256 in hex")
    if config.get("weights_file", WEIGHTS_NAME) != WEIGHTS_NAME:
        _fail("weights_file", "must be %s" % WEIGHTS_NAME)
    weights_bytes = config.get("weights_bytes")
    if weights_bytes is not None and (not _int(weights_bytes)
                                      or not 0 < weights_bytes <= MAX_WEIGHTS_BYTES):
        _fail("weights_bytes", "must be in [1, %d]" % MAX_WEIGHTS_BYTES)
    return config


def _check_classes(names: object) -> None:
    if not isinstance(names, list) or not 2 <= len(names) <= MAX_CLASSES:
        _fail("class_names", "must list 2-%d classes" % MAX_CLASSES)
    for name in names:
        check_class_name(name)
    if len(set(names)) != len(names):
        _fail("class_names", "must not repeat a class")


def _check_settings(settings: object) -> None:
    if not isinstance(settings, dict):
        _fail("adapter_settings", "must be an object")
    for key, value in settings.items():
        if key in INT_SETTINGS:
            low, high = INT_SETTINGS[key]
            if not _int(value) or not low <= value <= high:
                _fail("adapter_settings." + key, "must be an integer in [%d, %d]" % (low, high))
        elif key in STR_SETTINGS:
            if not isinstance(value, str) or len(value) > 32:
                _fail("adapter_settings." + key, "must be a short string")
        elif key in BOOL_SETTINGS:
            if not isinstance(value, bool):
                _fail("adapter_settings." + key, "must be true or false")
        else:
            _fail("adapter_settings", "has an unknown setting %r" % str(key)[:40])
    if settings.get("min_channels", 1) > settings.get("max_channels", 512):
        _fail("adapter_settings", "needs min_channels <= max_channels")


def _check_metrics(metrics: object) -> None:
    if not isinstance(metrics, dict) or len(metrics) > 64:
        _fail("metrics", "must be an object of at most 64 entries")
    if len(json.dumps(metrics)) > MAX_METRICS_BYTES or not _all_finite(metrics):
        _fail("metrics", "must be finite and under %d bytes" % MAX_METRICS_BYTES)
    for key in NUMERIC_METRICS:
        value = metrics.get(key)
        if value is not None and not _finite(value):
            _fail("metrics." + key, "must be a finite number")


def check_weights(blob: bytes, config: Dict[str, object]) -> Dict[str, Dict[str, object]]:
    """The safetensors header of ``blob``, checked torch-free against the (checked) config:
    size bounds, hash, dtypes, shapes that add up to the data, and a head with one row per
    class. Returns ``{tensor name: {dtype, shape, data_offsets}}``."""
    if len(blob) > MAX_WEIGHTS_BYTES:
        raise PayloadTooLarge("%s is over %d bytes" % (WEIGHTS_NAME, MAX_WEIGHTS_BYTES))
    if hashlib.sha256(blob).hexdigest() != config["weights_sha256"]:
        raise ArtifactError("%s does not match the hash in %s" % (WEIGHTS_NAME, CONFIG_NAME))
    if len(blob) < 8:
        raise ArtifactError("%s is too short" % WEIGHTS_NAME)
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > MAX_WEIGHTS_HEADER_BYTES or 8 + header_len > len(blob):
        raise ArtifactError("%s has a header of %d bytes" % (WEIGHTS_NAME, header_len))
    try:
        header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError("%s header is not JSON: %s" % (WEIGHTS_NAME, exc)) from exc
    if not isinstance(header, dict):
        raise ArtifactError("%s header is not an object" % WEIGHTS_NAME)
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise ArtifactError("%s holds over %d tensors" % (WEIGHTS_NAME, MAX_TENSORS))
    data_bytes = len(blob) - 8 - header_len
    spans = []
    for name, entry in header.items():
        spans.append(_tensor_span(name, entry, data_bytes))
    spans.sort()
    end = 0
    for start, stop in spans:  # back to back, covering the data exactly: no hidden bytes
        if start != end:
            raise ArtifactError("%s tensors overlap or leave gaps" % WEIGHTS_NAME)
        end = stop
    if end != data_bytes:
        raise ArtifactError("%s has %d bytes its tensors do not use"
                            % (WEIGHTS_NAME, data_bytes - end))
    classes = len(config["class_names"])
    for name in ("head.linear.weight", "head.linear.bias"):
        if name not in header or header[name]["shape"][0] != classes:
            raise ArtifactError("%s: %s does not have one row per class (%d)"
                                % (WEIGHTS_NAME, name, classes))
    return header


def _tensor_span(name: str, entry: object, data_bytes: int) -> tuple:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ArtifactError("tensor %r must have exactly dtype, shape, data_offsets" % name[:60])
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ArtifactError("tensor %r has unsupported dtype %r" % (name[:60], dtype))
    if not isinstance(shape, list) or len(shape) > 8 or \
            not all(_int(d) and 0 <= d <= MAX_WEIGHTS_BYTES for d in shape):
        raise ArtifactError("tensor %r has an unusable shape" % name[:60])
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_int(o) for o in offsets) \
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes:
        raise ArtifactError("tensor %r has offsets outside the file" % name[:60])
    elements = 1
    for dim in shape:
        elements *= dim
    if elements * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise ArtifactError("tensor %r: shape and byte count disagree" % name[:60])
    return offsets[0], offsets[1]
