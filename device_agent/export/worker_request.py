"""The worker's ``export`` request (torch side): the API names an adapter version, its
cache directory and where its validation images are; the worker exports (or serves the
cached export) and answers with the bundle's directory."""
import os
from typing import Dict, List

from device_agent.errors import InvalidInput
from device_agent.export.cache import cached_export
from device_agent.export.onnx_export import INPUT_NORMS, MAX_PARITY_IMAGES
from device_agent.jobspec import PARAM_BY_NAME


def validation_images(parity: Dict[str, object]) -> List[str]:
    """The validation split the job trained with (same dataset, fraction and seed as
    ``data.discover`` drew it), or no images where the dataset is gone or never was
    (an imported adapter): the export then checks parity on synthetic images."""
    from device_agent.training import data

    dataset_dir = parity.get("dataset_dir")
    if not isinstance(dataset_dir, str) or not os.path.isdir(dataset_dir):
        return []
    fraction = parity.get("val_fraction", PARAM_BY_NAME["val_fraction"].default)
    seed = parity.get("seed", PARAM_BY_NAME["seed"].default)
    if not isinstance(fraction, (int, float)) or not isinstance(seed, int) \
            or isinstance(seed, bool) or not 0 <= fraction < 1:
        raise InvalidInput("parity images: val_fraction in [0, 1) and an integer seed")
    split = data.discover(dataset_dir, float(fraction), seed)
    return [path for path, _ in (split.val or split.train)[:MAX_PARITY_IMAGES]]


def handle_export(header: Dict[str, object]) -> Dict[str, object]:
    """The ``export`` request's reply: the bundle's directory and its description."""
    if header["input_norm"] not in INPUT_NORMS:
        raise InvalidInput("input_norm must be one of %s" % ", ".join(INPUT_NORMS))
    result = cached_export(str(header["adapter_dir"]), str(header["cache_dir"]),
                           input_norm=str(header["input_norm"]),
                           softmax=bool(header["softmax"]), opset=int(header["opset"]),
                           parity_images=validation_images(header["parity"]))
    return {"dir": result.out_dir, "onnx_sha256": result.onnx_sha256,
            "input_name": result.input_name, "input_shape": list(result.input_shape),
            "output_name": result.output_name, "opset": result.opset,
            "parity": dict(result.parity._asdict())}
