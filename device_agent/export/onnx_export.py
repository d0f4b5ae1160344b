"""Export one trained domain (frozen backbone + its adapters + head) to ONNX, checked.

Signature agreed with the TensorRT engine cache (device_agent/export/tensorrt.py):

    export_domain(adapter_dir, out_dir, *, input_norm="builtin" | "imagenet", softmax=True,
                  opset=13, parity_images=None, tolerance=1e-4) -> ExportResult

writes ``model.onnx``, ``labels.txt`` and ``export.json`` into ``out_dir`` atomically.
Python 3.6 + torch 1.10 compatible, and torch 2.x.
"""
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch

from device_agent import __version__, artifacts, atomic
from device_agent.errors import ArtifactError, ExportParityError, InvalidInput
from device_agent.export.onnx_fold import make_static
from device_agent.manifest import sha256_of

INPUT_NAME = "input_0"
OUTPUT_NAME = "output_0"
ONNX_NAME = "model.onnx"
LABELS_NAME = "labels.txt"
METADATA_NAME = "export.json"
BUNDLE_FILES = (ONNX_NAME, LABELS_NAME, METADATA_NAME)
EXPORT_FORMAT = "device-agent-onnx-export"
INPUT_NORMS = ("builtin", "imagenet")
DEFAULT_OPSET = 13  # JetPack 4.6's TensorRT 8.0/8.2 ONNX parser reads opset 13 at most
OPSET_RANGE = (11, 17)  # what the legacy exporter of torch 1.10 .. 2.x writes
DEFAULT_TOLERANCE = 1e-4
MAX_PARITY_IMAGES = 64
SYNTHETIC_IMAGES = 16


class Parity(NamedTuple):
    """onnxruntime against PyTorch on the same images."""
    max_abs_diff: float      # of the outputs (probabilities when softmax is on)
    top1_agreement: float    # fraction of images whose top-1 class agrees
    images: int


class ExportResult(NamedTuple):
    out_dir: str
    onnx_path: str
    onnx_sha256: str
    input_name: str              # "input_0"
    input_shape: Tuple[int, int, int, int]  # (batch, 3, size, size), NCHW
    output_name: str             # "output_0"
    opset: int
    parity: Parity


def export_domain(adapter_dir: str, out_dir: str, *, input_norm: str = "builtin",
                  softmax: bool = True, opset: int = DEFAULT_OPSET,
                  parity_images: Optional[Sequence[str]] = None,
                  tolerance: float = DEFAULT_TOLERANCE, batch_size: int = 1) -> ExportResult:
    """Export the domain saved in ``adapter_dir`` into ``out_dir`` (created; an existing
    bundle there is replaced), checked against PyTorch before anything is offered.

    ``parity_images``: image files for the parity check (the domain's validation images);
    None: seeded synthetic images. ``batch_size``: the graph's static batch (1 for
    jetson-inference). Raises ExportParityError when onnxruntime and PyTorch disagree by
    more than ``tolerance`` or on any top-1 class; ``out_dir`` is then left as it was.
    """
    _check_options(input_norm, opset, tolerance, batch_size)
    out_dir = os.path.abspath(out_dir)
    _check_out_dir(out_dir)  # before the work, and again at the rename
    from device_agent.export.graph import ExportNet

    net, config = load_adapter(adapter_dir)
    size = int(config["input_size"])
    model = ExportNet(net, size, config["mean"], config["std"], input_norm, softmax).eval()
    images, source = parity_inputs(parity_images, size)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        onnx_path = os.path.join(staging, ONNX_NAME)
        write_onnx(model, onnx_path, (batch_size, 3, size, size), opset)
        make_static(onnx_path, (batch_size, 3, size, size))
        _fsync(onnx_path)
        graph = read_graph(onnx_path)
        reference = torch_reference(net, config, images, softmax)
        parity = check_parity(onnx_path, model, images, reference, batch_size, tolerance)
        metadata = describe(config, adapter_dir, graph, sha256_of(onnx_path), input_norm,
                            softmax, parity, source, tolerance)
        atomic.write_bytes(os.path.join(staging, LABELS_NAME),
                           ("\n".join(config["class_names"]) + "\n").encode("utf-8"))
        atomic.write_json(os.path.join(staging, METADATA_NAME), metadata)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_result(out_dir)


def _check_options(input_norm: str, opset: int, tolerance: float, batch_size: int) -> None:
    if input_norm not in INPUT_NORMS:
        raise InvalidInput("input_norm must be one of %s, not %r"
                           % (", ".join(INPUT_NORMS), input_norm))
    if not isinstance(opset, int) or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise InvalidInput("opset must be in [%d, %d] (13 for JetPack 4.6)" % OPSET_RANGE)
    if not 0 < tolerance < 1:
        raise InvalidInput("tolerance must be in (0, 1)")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 64:
        raise InvalidInput("batch_size must be in [1, 64]")


def load_adapter(adapter_dir: str):
    """(AdaptedNet with the domain active, its config): the backbone the adapter names,
    with its manifest weights (or the seeded random ones a test adapter was trained on)."""
    from device_agent.model import adapter_io
    from device_agent.model.backbones import RANDOM, build_backbone
    from device_agent.model.network import AdaptedNet

    config = adapter_io.read_config(adapter_dir)
    backbone = config["backbone"]
    weights = RANDOM if backbone["weights_sha256"] == RANDOM else None
    frozen, _ = build_backbone(backbone["name"], weights)
    net = AdaptedNet(frozen)
    adapter_io.load_domain(net, adapter_dir, "export")
    return net.eval(), config


def adapter_sha256(adapter_dir: str) -> str:
    """One hash of the adapter's files (config and weights): what the export was made of."""
    digest = hashlib.sha256()
    for name in artifacts.FILES:
        with open(os.path.join(adapter_dir, name), "rb") as handle:
            digest.update(hashlib.sha256(handle.read()).hexdigest().encode("ascii"))
    return digest.hexdigest()


def write_onnx(model: torch.nn.Module, path: str, shape: Sequence[int], opset: int) -> None:
    """The legacy (TorchScript) exporter at ``opset``: torch 2.x's dynamo exporter writes
    opset 18+, which JetPack 4.6's parser cannot read."""
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                  do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # every size is a constant at the fixed export size: the tracer's warnings that
            # Python values become constants state the intent here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, torch.zeros(*shape), path, **kwargs)
    except (RuntimeError, ValueError, TypeError) as exc:  # an operator it cannot write
        raise InvalidInput("the ONNX exporter failed at opset %d: %s" % (opset, exc)) from exc


class GraphInfo(NamedTuple):
    """What ``onnx`` reads back from the written file."""
    opset: int
    ir_version: int
    input_name: str
    input_shape: Tuple[int, ...]
    output_name: str
    output_shape: Tuple[int, ...]


def read_graph(path: str) -> GraphInfo:
    """Check the model with onnx's checker and read its interface back."""
    import onnx

    model = onnx.load(path)
    onnx.checker.check_model(model)
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    inputs = [i for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ArtifactError("the graph has %d inputs and %d outputs, expected 1 and 1"
                            % (len(inputs), len(model.graph.output)))
    return GraphInfo(opsets[0], model.ir_version, inputs[0].name, _dims(inputs[0]),
                     model.graph.output[0].name, _dims(model.graph.output[0]))


def _dims(value_info) -> Tuple[int, ...]:
    """A static shape (jetson-inference and TensorRT without optimisation profiles)."""
    dims = value_info.type.tensor_type.shape.dim
    if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        raise ArtifactError("the graph's %s has no static shape" % value_info.name)
    return tuple(int(d.dim_value) for d in dims)


def parity_inputs(paths: Optional[Sequence[str]], size: int):
    """(N, 3, size, size) RGB in [0, 1] (the evaluation transform without Normalize), and
    where they came from. No paths: seeded synthetic images (smooth colour fields + noise)."""
    if not paths:
        generator = torch.Generator().manual_seed(0)
        coarse = torch.rand(SYNTHETIC_IMAGES, 3, 4, 4, generator=generator)
        smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                                 align_corners=False)
        noise = 0.1 * torch.randn(SYNTHETIC_IMAGES, 3, size, size, generator=generator)
        return (smooth + noise).clamp(0, 1), "synthetic"
    from device_agent.training import data

    transform = data.eval_transform(data.TransformSettings(size, (0.0,) * 3, (1.0,) * 3))
    tensors = [transform(data.load_rgb(path)) for path in list(paths)[:MAX_PARITY_IMAGES]]
    return torch.stack(tensors), "images"


def torch_reference(net, config: Dict[str, object], images: torch.Tensor,
                    softmax: bool) -> torch.Tensor:
    """What the daemon's predictions compute for ``images`` (training.inference.classify:
    Normalize, then the lean inference path)."""
    mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], dtype=torch.float32).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net((images - mean) / std)
    return torch.softmax(logits, 1) if softmax else logits


def feed(images: torch.Tensor, model) -> torch.Tensor:
    """``images`` ([0, 1] RGB) as the graph's input: ImageNet-normalised when it wants so."""
    if not model.rescale and model.normalise:  # builtin: the graph normalises
        return images
    from device_agent.export.graph import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def run_onnx(onnx_path: str, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """onnxruntime (CPU) on ``inputs`` in chunks of the graph's static batch (the last
    chunk padded with its first image, the padding's outputs dropped)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    session = onnxruntime.InferenceSession(onnx_path, options,
                                           providers=["CPUExecutionProvider"])
    outputs = []
    for start in range(0, inputs.shape[0], batch_size):
        chunk = inputs[start:start + batch_size]
        count = chunk.shape[0]
        if count < batch_size:
            chunk = torch.cat([chunk, chunk[:1].expand(batch_size - count, -1, -1, -1)])
        result = session.run([OUTPUT_NAME], {INPUT_NAME: chunk.numpy()})[0]
        outputs.append(torch.from_numpy(result[:count]))
    return torch.cat(outputs)


def check_parity(onnx_path: str, model, images: torch.Tensor, reference: torch.Tensor,
                 batch_size: int, tolerance: float) -> Parity:
    exported = run_onnx(onnx_path, feed(images, model), batch_size)
    parity = Parity(float((exported - reference).abs().max()),
                    float((exported.argmax(1) == reference.argmax(1)).float().mean()),
                    int(images.shape[0]))
    if not parity.max_abs_diff <= tolerance or parity.top1_agreement < 1.0:
        raise ExportParityError(
            "the ONNX export disagrees with PyTorch on %d images: max abs diff %.3g "
            "(tolerance %.3g), top-1 agreement %.1f%% (100%% required); nothing exported"
            % (parity.images, parity.max_abs_diff, tolerance, 100 * parity.top1_agreement))
    return parity


def describe(config: Dict[str, object], adapter_dir: str, graph: GraphInfo, onnx_sha256: str,
             input_norm: str, softmax: bool, parity: Parity, source: str,
             tolerance: float) -> Dict[str, object]:
    """export.json: what the bundle is, what made it, how its input must look."""
    import onnx
    import onnxruntime

    from device_agent.export.graph import IMAGENET_MEAN, IMAGENET_STD

    imagenet = input_norm == "imagenet"
    return {
        "format": EXPORT_FORMAT, "format_version": 1,
        "backbone": dict(config["backbone"]),
        "adapter": {"sha256": adapter_sha256(adapter_dir), "method": config["method"],
                    "weights_sha256": config["weights_sha256"]},
        "classes": len(config["class_names"]), "labels_file": LABELS_NAME,
        "onnx": {"file": ONNX_NAME, "sha256": onnx_sha256, "opset": graph.opset,
                 "ir_version": graph.ir_version},
        "input": {"name": graph.input_name, "shape": list(graph.input_shape), "layout": "NCHW",
                  "dtype": "float32", "color": "RGB", "pixel_range": [0.0, 1.0],
                  "normalisation": input_norm,
                  "mean": list(IMAGENET_MEAN) if imagenet else [0.0, 0.0, 0.0],
                  "std": list(IMAGENET_STD) if imagenet else [1.0, 1.0, 1.0],
                  "backbone_mean": list(config["mean"]), "backbone_std": list(config["std"]),
                  "resize": "shorter side to ceil(size / 0.875), centre crop to size"},
        "output": {"name": graph.output_name, "shape": list(graph.output_shape),
                   "softmax": bool(softmax)},
        "exporter": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "device_agent": __version__,
                     "path": "torch.onnx.export (TorchScript, dynamo=False)"},
        "parity": {"max_abs_diff": parity.max_abs_diff,
                   "top1_agreement": parity.top1_agreement, "images": parity.images,
                   "images_from": source, "tolerance": tolerance,
                   "reference": "PyTorch, the daemon's predict path (fp32, CPU)",
                   "runtime": "onnxruntime CPUExecutionProvider"},
    }


def _publish(staging: str, out_dir: str) -> None:
    """Rename the verified bundle into place. An ``out_dir`` that holds a bundle (or
    nothing) is replaced; one that holds other files is refused, never overwritten."""
    _check_out_dir(out_dir)
    if os.path.isdir(out_dir):
        retired = tempfile.mkdtemp(prefix=".retired-", dir=os.path.dirname(out_dir))
        os.rename(out_dir, os.path.join(retired, "bundle"))
        os.rename(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out_dir)
    _fsync(os.path.dirname(out_dir))


def _check_out_dir(out_dir: str) -> None:
    """``out_dir`` is new, empty or an export bundle: anything else is never overwritten."""
    if os.path.isdir(out_dir):
        extra = sorted(set(os.listdir(out_dir)) - set(BUNDLE_FILES))
        if extra:
            raise InvalidInput("%s holds files that are not an export bundle (%s); choose an "
                               "empty or new directory" % (out_dir, ", ".join(extra[:3])))
    elif os.path.exists(out_dir):
        raise InvalidInput("%s exists and is not a directory" % out_dir)


def _fsync(path: str) -> None:
    """Flush a file or a directory entry to disk (a rename must survive a power cut)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metadata(out_dir: str) -> Dict[str, object]:
    path = os.path.join(out_dir, METADATA_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ArtifactError("no readable %s in %s: %s" % (METADATA_NAME, out_dir, exc)) from exc
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise ArtifactError("%s is not a device-agent export description" % path)
    return metadata


def read_result(out_dir: str) -> ExportResult:
    """The :class:`ExportResult` of the bundle in ``out_dir`` (from its export.json)."""
    metadata = read_metadata(out_dir)
    parity = metadata["parity"]
    return ExportResult(
        out_dir=out_dir, onnx_path=os.path.join(out_dir, ONNX_NAME),
        onnx_sha256=metadata["onnx"]["sha256"], input_name=metadata["input"]["name"],
        input_shape=tuple(metadata["input"]["shape"]), output_name=metadata["output"]["name"],
        opset=metadata["onnx"]["opset"],
        parity=Parity(parity["max_abs_diff"], parity["top1_agreement"], parity["images"]))
