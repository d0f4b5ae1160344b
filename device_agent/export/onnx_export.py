"""Export one trained domain (frozen backbone + its adapters + head) to ONNX, checked.

Signature agreed with the TensorRT engine cache (device_agent/export/tensorrt.py):

    export_domain(adapter_dir, out_dir, *, input_norm="builtin" | "imagenet", softmax=True,
                  opset=13, parity_images=None, tolerance=1e-4) -> ExportResult

writes ``model.onnx``, ``labels.txt`` and ``export.json`` into ``out_dir`` atomically.
Python 3.6 + torch 1.10 compatible, and torch 2.x.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

INPUT_NAME = "input_0"
OUTPUT_NAME = "output_0"
ONNX_NAME = "model.onnx"
LABELS_NAME = "labels.txt"
METADATA_NAME = "export.json"
BUNDLE_FILES = (ONNX_NAME, LABELS_NAME, METADATA_NAME)
INPUT_NORMS = ("builtin", "imagenet")
DEFAULT_OPSET = 13
DEFAULT_TOLERANCE = 1e-4


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
    input_shape: Tuple[int, int, int, int]  # (1, 3, size, size), NCHW
    output_name: str             # "output_0"
    opset: int
    parity: Parity


def export_domain(adapter_dir: str, out_dir: str, *, input_norm: str = "builtin",
                  softmax: bool = True, opset: int = DEFAULT_OPSET,
                  parity_images: Optional[Sequence[str]] = None,
                  tolerance: float = DEFAULT_TOLERANCE) -> ExportResult:
    raise NotImplementedError("body follows")
