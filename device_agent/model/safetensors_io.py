"""A small, strict reader and writer of the safetensors format (never pickle).

The ``safetensors`` package has no Python 3.6 build, so the torch side writes the format
itself: an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}`` padded with
spaces to 8 bytes, then the raw little-endian tensor bytes. The reader checks every offset,
size and dtype before it touches the data; tests compare both against the real package.
"""
import json
import struct
from typing import Dict, Optional, Tuple

import numpy as np
import torch

MAX_HEADER_BYTES = 16 * 1024 * 1024

_DTYPES = {
    "F64": (torch.float64, np.float64), "F32": (torch.float32, np.float32),
    "F16": (torch.float16, np.float16), "I64": (torch.int64, np.int64),
    "I32": (torch.int32, np.int32), "I16": (torch.int16, np.int16),
    "I8": (torch.int8, np.int8), "U8": (torch.uint8, np.uint8), "BOOL": (torch.bool, np.bool_),
}
_NAME_OF = {torch_dtype: name for name, (torch_dtype, _) in _DTYPES.items()}


class SafetensorsError(ValueError):
    """The bytes are not a well-formed safetensors file."""


def dumps(tensors: Dict[str, torch.Tensor],
          metadata: Optional[Dict[str, str]] = None) -> bytearray:
    """The file's bytes, built in one buffer: each tensor is copied once, straight into it.
    (Joining per-tensor ``bytes`` held three copies of a checkpoint at once: with a
    fine-tuned ResNet-18's weights, gradients' moments and best epoch, some 500 MB.)"""
    header = {}  # type: Dict[str, object]
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _NAME_OF:
            raise TypeError("unsupported dtype %s for %r" % (tensor.dtype, name))
        array = tensor.numpy().reshape(-1)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _NAME_OF[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * ((-len(encoded)) % 8)
    start = 8 + len(encoded)
    blob = bytearray(start + offset)
    blob[:start] = struct.pack("<Q", len(encoded)) + encoded
    for array in arrays:
        blob[start:start + array.nbytes] = array.view(np.uint8).data
        start += array.nbytes
    return blob


def loads(blob: bytes) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Parse ``blob``; returns (tensors, metadata). Raises SafetensorsError when malformed."""
    if len(blob) < 8:
        raise SafetensorsError("file shorter than its 8-byte header length")
    header_len, = struct.unpack("<Q", blob[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(blob):
        raise SafetensorsError("header length %d does not fit the file" % header_len)
    try:
        header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsError("header is not JSON: %s" % exc) from exc
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError("__metadata__ must map str to str")
    data = memoryview(blob)[8 + header_len:]
    spans = []
    tensors = {}
    for name, entry in header.items():
        tensors[name], span = _tensor(name, entry, data)
        spans.append(span)
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise SafetensorsError("tensor data overlaps or leaves a hole at byte %d" % begin)
        covered = end
    if covered != len(data):
        raise SafetensorsError("%d trailing bytes after the last tensor" % (len(data) - covered))
    return tensors, metadata


def _tensor(name: str, entry: object, data: memoryview) -> Tuple[torch.Tensor, Tuple[int, int]]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError("entry %r must have exactly dtype, shape, data_offsets" % name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPES:
        raise SafetensorsError("tensor %r has unsupported dtype %r" % (name, dtype))
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise SafetensorsError("tensor %r has a bad shape" % name)
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= len(data)):
        raise SafetensorsError("tensor %r has bad data offsets" % name)
    torch_dtype, np_dtype = _DTYPES[dtype]
    numel = 1
    for size in shape:
        numel *= size
    itemsize = np.dtype(np_dtype).itemsize
    if numel * itemsize != offsets[1] - offsets[0]:
        raise SafetensorsError("tensor %r: shape %s needs %d bytes, offsets give %d"
                               % (name, shape, numel * itemsize, offsets[1] - offsets[0]))
    array = np.frombuffer(data[offsets[0]:offsets[1]], dtype=np.dtype(np_dtype).newbyteorder("<"))
    tensor = torch.from_numpy(array.astype(np_dtype, copy=True).reshape(shape))
    return tensor.to(torch_dtype), (offsets[0], offsets[1])
