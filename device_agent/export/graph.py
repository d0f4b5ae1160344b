"""The export path of a domain: the same network as the daemon's predictions, with every
shape a Python int for one fixed input size, so that the legacy ONNX exporter writes a
static graph of plain operators.

Why a separate path: the training path computes the adapters' pooling factors and
upsampling repeats from the traced tensor sizes (``x.shape`` is a tensor while the exporter
traces), so the exporter sees an AveragePool whose kernel is data and a ``repeat_interleave``
with traced repeats; neither exports. Here each adapter is wrapped once its sizes are known
(one eager probe pass at the export size) and runs:

- pooling as ``avg_pool2d`` with kernel = stride over regions that the kernel divides: a
  ceil-mode pool over a size that it does not divide averages its last, partial window over
  the pixels inside (PyTorch), which ONNX's AveragePool with ``ceil_mode`` does not
  promise (its ``count_include_pad`` concerns explicit pads, not the ceil overhang; ONNX
  Operators, AveragePool). So the map is cut into the whole-window part and the partial
  strips, each pooled by its own exact window and concatenated: the same sums, divided by
  the same counts.
- block-nearest upsampling as a gather by constant indices (ONNX Gather): cell ``i // f``
  for output pixel ``i``, exactly what ``repeat_interleave`` + crop produce. (Resize
  "nearest" with a scale of 3 rounds ``i * (1/3)`` in float and can pick the wrong cell.)

Python 3.6 / torch 1.10 compatible.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from device_agent.model import lean_ops
from device_agent.model.adapters import BranchAttention, DA2Adapter, LiteResidual
from device_agent.model.layers import RunContext
from device_agent.model.network import AdaptedNet, DomainModule

Size = Tuple[int, int]
# jetson-inference's imageNet feeds ONNX models RGB in [0, 1] normalised by these
# (jetson-inference, c/imageNet.cpp: cudaTensorNormMeanRGB with the ImageNet mean/std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _spans(length: int, kernel: int) -> List[Tuple[int, int, int]]:
    """(start, stop, window) pieces of one axis: whole windows, then the partial one."""
    whole = (length // kernel) * kernel
    spans = [(0, whole, kernel)] if whole else []
    if whole < length:
        spans.append((whole, length, length - whole))
    return spans


class StaticAvgPool(nn.Module):
    """``lean_ops.avg_pool(x, factor, lean=False)`` for an input of spatial ``size``."""

    def __init__(self, size: Size, factor: int) -> None:
        super().__init__()
        self.kernel = lean_ops.pool_kernel(size, factor)
        self.rows = _spans(size[0], self.kernel[0])
        self.cols = _spans(size[1], self.kernel[1])
        self.out_size = (-(-size[0] // self.kernel[0]), -(-size[1] // self.kernel[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == (1, 1):
            return x
        bands = []
        for top, bottom, kh in self.rows:
            cells = [F.avg_pool2d(x[:, :, top:bottom, left:right], (kh, kw), (kh, kw))
                     for left, right, kw in self.cols]
            bands.append(cells[0] if len(cells) == 1 else torch.cat(cells, 3))
        return bands[0] if len(bands) == 1 else torch.cat(bands, 2)


class BlockUpsample(nn.Module):
    """``lean_ops.add_block_upsampled``'s upsampling: cell ``(i // fh, j // fw)`` at
    pixel ``(i, j)``, cropped to ``out_size``, as two gathers by constant indices."""

    def __init__(self, low: Size, out_size: Size) -> None:
        super().__init__()
        factor_h, factor_w = -(-out_size[0] // low[0]), -(-out_size[1] // low[1])
        self.register_buffer("rows", torch.arange(out_size[0]) // factor_h)
        self.register_buffer("cols", torch.arange(out_size[1]) // factor_w)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.index_select(2, self.rows).index_select(3, self.cols)


def branch_attention(attention: BranchAttention, h: torch.Tensor) -> torch.Tensor:
    """:class:`BranchAttention`'s forward with ``max(1)`` for ``amax(1)``: the same values,
    and torch 1.10's exporter has no symbolic for ``amax`` (it has one for ``max``)."""
    if "channel" in attention.form:
        pooled = h.mean((2, 3), keepdim=True)
        h = h * torch.sigmoid(attention.excite(F.relu(attention.squeeze(pooled))))
    if "spatial" in attention.form:
        stats = torch.cat([h.mean(1, keepdim=True), h.max(1, keepdim=True)[0]], 1)
        h = h * torch.sigmoid(attention.spatial(stats))
    return h


class StaticDA2(nn.Module):
    """A :class:`DA2Adapter` (sharing its parameters) at fixed sizes."""

    def __init__(self, adapter: DA2Adapter, in_size: Size, out_size: Size) -> None:
        super().__init__()
        self.adapter = adapter
        self.out_size = out_size
        self.pool = StaticAvgPool(in_size, adapter.pool_factor(in_size))
        self.upsample = BlockUpsample(self.pool.out_size, out_size) \
            if adapter.upsample == "block" else None

    def forward(self, x: torch.Tensor, out: torch.Tensor, lean: bool) -> torch.Tensor:
        h = F.relu(self.adapter.reduce(self.pool(x)))
        a = self.adapter.tail[1](branch_attention(self.adapter.attention, h))
        if self.upsample is not None:
            return out + self.upsample(a)
        return out + F.interpolate(a, size=self.out_size, mode="bilinear", align_corners=False)


class StaticLiteResidual(nn.Module):
    """A :class:`LiteResidual` (sharing its parameters) at fixed sizes."""

    def __init__(self, adapter: LiteResidual, in_size: Size, out_size: Size) -> None:
        super().__init__()
        self.adapter = adapter
        self.out_size = out_size
        self.pool = StaticAvgPool(in_size, 2)

    def forward(self, x: torch.Tensor, out: torch.Tensor, lean: bool) -> torch.Tensor:
        m = self.adapter
        h = F.relu(m.norm(m.conv(self.pool(x))))
        a = m.final_norm(m.project(h))
        return out + F.interpolate(a, size=self.out_size, mode="bilinear", align_corners=False)


STATIC_ADAPTERS = {DA2Adapter: StaticDA2, LiteResidual: StaticLiteResidual}


class StaticContext(RunContext):
    """The plain, eval-mode run context whose adapters are the static ones."""

    def __init__(self, domain: DomainModule, adapters: Dict[int, nn.Module]) -> None:
        super().__init__(lean=False, domain=domain, bn_train=False)
        self.static_adapters = adapters

    def adapter(self, block_index: int) -> Optional[nn.Module]:
        return self.static_adapters.get(block_index)


def probe_adapter_sizes(net: AdaptedNet, size: int) -> Dict[int, Tuple[Size, Size]]:
    """Block index -> (adapter input size, block output size) at a ``size`` px input, from
    one eager pass with pre-hooks on the active domain's adapters."""
    domain = net.domain
    sizes = {}  # type: Dict[int, Tuple[Size, Size]]
    handles = []
    for key, adapter in domain.adapters.items():
        def record(module, inputs, index=int(key)):
            x, out = inputs[0], inputs[1]
            sizes[index] = (tuple(int(v) for v in x.shape[-2:]),
                            tuple(int(v) for v in out.shape[-2:]))
        handles.append(adapter.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size), lean=False)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def input_normalisation(input_norm: str, mean: Sequence[float],
                        std: Sequence[float]) -> Tuple[Sequence[float], Sequence[float]]:
    """(scale, shift) that turn the graph's input into the [0, 1] RGB it was made from:
    identity for "builtin"; undoing ImageNet's mean/std for "imagenet"."""
    if input_norm == "builtin":
        return (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    return IMAGENET_STD, IMAGENET_MEAN


class ExportNet(nn.Module):
    """Input (N, 3, size, size) -> the active domain's probabilities (or logits)."""

    def __init__(self, net: AdaptedNet, size: int, mean: Sequence[float], std: Sequence[float],
                 input_norm: str = "builtin", softmax: bool = True) -> None:
        super().__init__()
        self.net = net.eval()
        self.softmax = softmax
        scale, shift = input_normalisation(input_norm, mean, std)
        # torchvision's Normalize (subtract, divide) on the [0, 1] input, rebuilt first from
        # ImageNet-normalised input unless the backbone's own normalisation is ImageNet's
        self.rescale = input_norm == "imagenet" and \
            (tuple(scale), tuple(shift)) != tuple(map(tuple, (std, mean)))
        self.normalise = input_norm == "builtin" or self.rescale
        self.register_buffer("in_scale", _channels(scale))
        self.register_buffer("in_shift", _channels(shift))
        self.register_buffer("mean", _channels(mean))
        self.register_buffer("std", _channels(std))
        domain = net.domain
        adapters = {}
        for index, (in_size, out_size) in probe_adapter_sizes(net, size).items():
            adapter = domain.adapter_for(index)
            adapters[index] = STATIC_ADAPTERS[type(adapter)](adapter, in_size, out_size)
        self.static_adapters = nn.ModuleDict({str(k): v for k, v in adapters.items()})
        self.context = StaticContext(domain, adapters)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.rescale:
            x = x * self.in_scale + self.in_shift
        if self.normalise:
            x = (x - self.mean) / self.std
        domain = self.net.domain
        backbone = domain.backbone if domain.backbone is not None else self.net.backbone
        logits = domain.head(backbone(x, self.context), False)
        return torch.softmax(logits, 1) if self.softmax else logits


def _channels(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values]).view(1, 3, 1, 1)
