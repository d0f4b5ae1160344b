"""The job contract (stdlib only, Python 3.6 syntax; both columns import it).

One table says what a training job may ask for -- every parameter with its type, default and
bounds -- and one class says what a finished job reports. The API's request schema, the wire
validation in the worker, the trainer's config and the command-line flags are all built from
:data:`PARAMS`; the worker sends a :class:`JobReport`, which the daemon stores and the views
read. Memory in a report is in bytes, one unit everywhere (each reader converts for display).
"""
from collections import OrderedDict, namedtuple
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from device_agent import classmetrics
from device_agent.errors import InvalidInput


class Method(NamedTuple):
    name: str
    trains: str        # what the job trains, in words
    default_lr: float  # Adam's learning rate when the job names none


METHODS = OrderedDict((m.name, m) for m in (
    Method("finetune", "every weight and BN (train mode), on a private copy", 1e-4),
    Method("last", "the classifier head only", 3e-3),
    Method("bn_last", "BN scale and shift + head", 1e-3),
    Method("tinytl_bias", "biases (BN shifts) + head (TinyTL-B)", 1e-3),
    Method("tinytl_lite_residual", "TinyTL lite residual modules + biases + head (TinyTL-L+B)",
           1e-3),
    Method("da2", "DA2 additive attention adapters + head", 1e-3),
))
DEFAULT_METHOD = "da2"
DEFAULT_BACKBONE = "efficientnet_lite0"

# --- job states -----------------------------------------------------------------------------

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
TRANSITIONS = {
    "queued": ("running", "cancelled"),
    "running": ("succeeded", "failed", "cancelled", "interrupted"),
    "interrupted": ("queued", "failed", "cancelled"),  # a crashed job resumes or gives up
}


def can_move(state: str, to: str) -> bool:
    return to in TRANSITIONS.get(state, ())


# --- parameters -----------------------------------------------------------------------------

class Param(NamedTuple):
    """One job parameter. Bounds are inclusive unless ``open_low``/``open_high``; ``auto``:
    the string "auto" is also accepted (the trainer picks); ``nullable``: None means "the
    default of whatever decides it" (the backbone's resolution, the method's lr)."""
    name: str
    type: type
    default: Any
    low: Optional[float] = None
    high: Optional[float] = None
    description: str = ""
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    auto: bool = False
    choices: Tuple[str, ...] = ()


PARAMS = (
    Param("method", str, DEFAULT_METHOD, choices=tuple(METHODS),
          description="what is trained: da2 (the DA2 adapter), or a baseline"),
    Param("backbone", str, DEFAULT_BACKBONE, description="a backbone of models/manifest.json"),
    Param("epochs", int, 5, 1, 1000, "passes over the training split"),
    Param("batch_size", int, 8, 1, 1024, "images per step (1-1024), or \"auto\": the largest "
          "that the analytic estimator fits under the memory limit", auto=True),
    Param("resolution", int, None, 16, 1024, "input size in pixels; default: the backbone's",
          nullable=True),
    Param("lr", float, None, 0, 1, "learning rate; default: the method's", open_low=True,
          nullable=True),
    Param("memory_limit_mb", int, None, 64, 1 << 20, "the worker's memory ceiling for this job "
          "(RSS, and the CUDA allocator's cap), in 10^6 bytes; default: the daemon's setting, "
          "else what MemAvailable leaves", nullable=True),
    Param("seed", int, 0, 0, 2 ** 31 - 1, "data split, shuffling and init"),
    Param("micro_batch", int, 0, 0, 1024, "> 0: accumulate gradients over chunks of this size"),
    Param("hflip", bool, True, description="horizontal-flip augmentation (off for text, "
                                            "digits)"),
    Param("label_smoothing", float, 0.1, 0, 1, "label smoothing of the cross-entropy loss",
          open_high=True),
    Param("patience", int, 0, 0, 1000, "stop after this many epochs without a better "
                                       "validation top-1; 0: never"),
    Param("val_fraction", float, 0.2, 0, 1, "share of each class held out for validation "
          "(a dataset without val/)", open_high=True),
    Param("adapter_settings", dict, None, description="da2: adapter settings, e.g. "
          "{\"pool\": 2, \"attention\": \"channel\"} (README: The DA2 adapter)", nullable=True),
    Param("train_bn", bool, False, description="da2: also train BN scale and shift"),
    # issue 14, the data loop: retrain from where the domain is. Off by default: a job's
    # result then depends only on its parameters and its snapshot, not on which version
    # happens to be active (a rollback would otherwise change what the next job learns).
    Param("warm_start", bool, False, description="start from the domain's active adapter "
          "when it has the same classes (and method, backbone, settings): a few new samples "
          "then need few epochs; otherwise the job starts fresh and says why (the daemon's "
          "jobs only)"),
)
PARAM_BY_NAME = OrderedDict((p.name, p) for p in PARAMS)
MAX_ADAPTER_SETTINGS = 32


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            dict: "an object"}[kind]


def _bound_problem(param: Param, value: float) -> Optional[str]:
    low_ok = param.low is None or (value > param.low if param.open_low else value >= param.low)
    high_ok = param.high is None or (value < param.high if param.open_high
                                     else value <= param.high)
    if low_ok and high_ok:
        return None
    return "%s must be in %s%s, %s%s" % (param.name, "(" if param.open_low else "[",
                                         _number(param.low), _number(param.high),
                                         ")" if param.open_high else "]")


def _number(value: Optional[float]) -> str:
    return "-inf" if value is None else ("%g" % value)


def check_value(param: Param, value: Any) -> Any:
    """``value`` as the parameter's type, or InvalidInput saying what is wrong."""
    if value is None and param.nullable:
        return None
    if param.auto and value == "auto":
        return "auto"
    kind = param.type
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidInput("%s must be %s%s" % (param.name, _type_name(kind),
                                                " or \"auto\"" if param.auto else ""))
    if kind is float and (value != value or value in (float("inf"), float("-inf"))):
        raise InvalidInput("%s must be a finite number" % param.name)
    if kind in (int, float):
        problem = _bound_problem(param, value)
        if problem:
            raise InvalidInput(problem)
    if param.choices and value not in param.choices:
        raise InvalidInput("unknown %s %r; known: %s" % (param.name, value,
                                                         ", ".join(param.choices)))
    if kind is dict and (len(value) > MAX_ADAPTER_SETTINGS
                         or not all(isinstance(k, str) for k in value)):
        raise InvalidInput("%s must be an object of at most %d named settings"
                           % (param.name, MAX_ADAPTER_SETTINGS))
    return value


_Fields = namedtuple("TrainParams", [p.name for p in PARAMS])  # type: ignore


class TrainParams(_Fields):
    """Every parameter of one job, checked; build it with :meth:`from_mapping`."""

    __slots__ = ()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainParams":
        """Defaults for what ``values`` leaves out; InvalidInput for an unknown name or a
        value of the wrong type or out of bounds."""
        unknown = sorted(set(values) - set(PARAM_BY_NAME))
        if unknown:
            raise InvalidInput("unknown training parameters: %s (known: %s)"
                               % (", ".join(unknown), ", ".join(PARAM_BY_NAME)))
        return cls(**{p.name: check_value(p, values[p.name]) if p.name in values else p.default
                      for p in PARAMS})

    def to_dict(self) -> Dict[str, Any]:
        return OrderedDict(zip(self._fields, self))

    @property
    def default_lr(self) -> float:
        return METHODS[self.method].default_lr


# --- the report -----------------------------------------------------------------------------

MIB = 1 << 20
LEGACY_MB = 1000000  # reports written before the contract held memory in 10^6-byte MB


class JobReport(object):
    """What a finished job reports. Memory figures are bytes (``*_bytes``)."""

    FIELDS = OrderedDict((
        ("method", str), ("backbone", str), ("classes", list), ("epochs", int),
        ("resumed", bool), ("train_images", int), ("val_images", int),
        ("val_top1", float), ("trainable_params", int), ("adapter_bytes", int),
        ("resolution", int), ("batch_size", int), ("micro_batch", int),
        # memory, all in bytes
        ("memory_limit_bytes", int), ("saved_activation_bytes", int),
        ("estimated_peak_bytes", int), ("step_peak_rss_bytes", int),
        ("peak_rss_bytes", int), ("cuda_peak_bytes", int),
        ("memory_adjustments", list),
        # latency groups
        ("step_ms_p50", float), ("step_ms_p95", float), ("images_per_sec", float),
        ("history", list), ("cpu", dict),
        # issue 14: whether the job started from the active adapter, and why (not)
        ("warm_started", bool), ("warm_start_note", str),
        # per-class results: the kept epoch's validation confusion matrix, as the non-zero
        # [true, predicted, count] cells (classmetrics.to_cells) in the order of ``classes``
        ("val_confusion", list),
    ))
    MEMORY = ("memory_limit_bytes", "saved_activation_bytes", "estimated_peak_bytes",
              "step_peak_rss_bytes", "peak_rss_bytes", "cuda_peak_bytes")
    LATENCY = ("step_ms_p50", "step_ms_p95", "images_per_sec")

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.FIELDS))
        if unknown:
            raise ValueError("JobReport has no fields %s" % ", ".join(unknown))
        for name in self.FIELDS:
            setattr(self, name, values.get(name))
        self.classes = list(self.classes or [])
        self.memory_adjustments = list(self.memory_adjustments or [])
        self.history = list(self.history or [])
        self.cpu = dict(self.cpu or {})

    def to_dict(self) -> Dict[str, Any]:
        return OrderedDict((name, getattr(self, name)) for name in self.FIELDS)

    def metrics(self) -> Dict[str, Any]:
        """What an adapter keeps of its job (its config's ``metrics``): all but the history,
        the classes (the config has those as ``class_names``) and the confusion matrix
        (it grows with the classes; a config's metrics are capped, artifacts.MAX_METRICS_BYTES:
        the job's report and the version's summary keep it)."""
        return OrderedDict((k, v) for k, v in self.to_dict().items()
                           if k not in ("history", "classes", "val_confusion"))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "JobReport":
        """A stored report -- also one of a release before this contract, whose memory was
        ``*_mb`` in 10^6 bytes and whose adapter size might be missing."""
        known = {k: v for k, v in values.items() if k in cls.FIELDS}
        for name in cls.MEMORY:
            legacy = values.get(name[:-len("_bytes")] + "_mb")
            if known.get(name) is None and isinstance(legacy, (int, float)):
                known[name] = int(legacy * LEGACY_MB)
        return cls(**known)

    def mib(self, name: str) -> Optional[float]:
        """A memory field in MiB (2^20 bytes), the unit the API and telemetry show."""
        value = getattr(self, name)
        return None if value is None else value / float(MIB)

    def class_results(self, limit: int = classmetrics.MOST_CONFUSED
                      ) -> Optional[classmetrics.ClassResults]:
        """Per-class figures of the kept epoch; None for a report without a (well-formed)
        matrix: one of a release before per-class results, or of a job with no validation
        images."""
        return classmetrics.results_of(self.classes, self.val_confusion, limit)


def to_mib(value: Optional[float], unit_bytes: int) -> Optional[float]:
    """``value`` counted in units of ``unit_bytes``, in MiB (None stays None)."""
    return None if value is None else value * unit_bytes / float(MIB)


