"""Memory-lean autograd Functions for training on a frozen backbone.

Stock autograd saves the input of every conv and batch norm even when their weights are
frozen, a full fp32 tensor per ReLU, and the whole input of ``avg_pool2d``
(PyTorch's autograd notes on saved tensors:
https://pytorch.org/docs/stable/notes/autograd.html). These Functions save only what backward needs:

- frozen conv (BN folded into it by the caller): nothing but the weight;
- ReLU / ReLU6: a bit-packed 1-bit mask, the activation applied in place;
- average pooling: nothing but shapes;
- max pooling: int16/int32 argmax positions instead of the fp32 input plus int64 indices.

Python 3.6 / torch 1.10 compatible.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Pad4 = Optional[Tuple[int, int, int, int]]  # F.pad order: left, right, top, bottom

# torch 1.x runs a grouped conv_transpose2d on CPU one group at a time; torch 2.x's own is
# faster than the conv2d form below (measured with a 480-channel depthwise layer: 1.10.2 68 ms
# transposed, 13 ms as conv2d; 2.14 11 ms transposed, 18 ms as conv2d). JetPack 4's 1.10 is
# the one that needs it (benchmarks/conv_grad_forms.py measures both forms on any stack).
_TRANSPOSE_AS_CONV = int(torch.__version__.split(".")[0]) < 2

# Multiplying 8 little-endian 0/1 bytes (one int64) by this constant gathers bit i of
# the packed byte from byte i into the top byte of the product (memory.md, section 9.4).
_PACK_MAGIC = 0x0102040810204080


def _grad_needed(*tensors: Optional[torch.Tensor]) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into uint8, 8 elements a byte, element i at bit i."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    if _VIEW_AS_WORDS:
        words = flat.view(torch.int64)
        return ((words * _PACK_MAGIC) >> 56).to(torch.uint8)
    shifts = torch.arange(8, device=flat.device, dtype=torch.uint8)
    return (flat.view(-1, 8).to(torch.uint8) << shifts).sum(1, dtype=torch.uint8)


def _can_view_as_words() -> bool:
    """Whether this torch views bytes as int64 (1.11+). Asked once: torch 1.10 refuses with
    an exception that costs ~1.4 ms to build, once per ReLU per step when asked each time."""
    try:
        torch.zeros(8, dtype=torch.bool).view(torch.int64)
        return True
    except RuntimeError:
        return False


_VIEW_AS_WORDS = _can_view_as_words()


_UNPACK_TABLES = {}  # device -> (256, 8) uint8: the bits of every byte value


def _unpack_table(device: torch.device) -> torch.Tensor:
    if device not in _UNPACK_TABLES:
        values = torch.arange(256, dtype=torch.int64)
        table = (values[:, None] >> torch.arange(8)) & 1
        _UNPACK_TABLES[device] = table.to(dtype=torch.uint8, device=device)
    return _UNPACK_TABLES[device]


def unpack_bits(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a uint8 0/1 tensor of ``shape`` (one table gather)."""
    numel = 1
    for size in shape:
        numel *= size
    bits = _unpack_table(packed.device).index_select(0, packed.long())
    return bits.view(-1)[:numel].view(*shape)


def same_padding(size: Tuple[int, int], kernel: Tuple[int, int], stride: Tuple[int, int],
                 dilation: Tuple[int, int]) -> Pad4:
    """TensorFlow 'SAME' padding for an input of ``size`` (EfficientNet-Lite's convention)."""
    pads = []
    for length, k, s, d in zip(size, kernel, stride, dilation):
        out = -(-length // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - length, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return None
    return (left, right, top, bottom)


def _crop(grad: torch.Tensor, pad: Pad4) -> torch.Tensor:
    if pad is None:
        return grad
    left, right, top, bottom = pad
    height, width = grad.shape[-2:]
    return grad[:, :, top:height - bottom, left:width - right]


def _pair(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _conv2d_input_grad(shape, weight, grad, stride, padding, dilation, groups) -> torch.Tensor:
    """The input gradient of conv2d as a transposed conv. (``torch.nn.grad.conv2d_input``
    feeds an expanded dummy input that oneDNN copies to full size: slower, and a peak.)"""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    # a strided layer keeps conv_transpose2d: the conv2d form would first spread its gradient
    # into an input-sized copy, one more input-sized buffer at the step's peak
    if groups > 1 and stride == (1, 1) and grad.device.type == "cpu" and _TRANSPOSE_AS_CONV:
        grad_x = _input_grad_as_conv(weight, grad, padding, dilation, groups)
        if grad_x is not None:
            return grad_x
    kernel = weight.shape[-2:]
    output_padding = tuple(
        shape[2 + i] - ((grad.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                        + dilation[i] * (kernel[i] - 1) + 1)
        for i in range(2))
    return F.conv_transpose2d(grad, weight, None, stride, padding, output_padding, groups,
                              dilation)


def _input_grad_as_conv(weight, grad, padding, dilation, groups) -> Optional[torch.Tensor]:
    """The transposed conv of a stride-1 conv as a plain conv2d: the gradient correlated
    with the kernel flipped and transposed per group, padded by conv2d itself (the output is
    the input's size). torch 1.10 runs a grouped ``conv_transpose2d`` on CPU one group at a
    time (``_convolution_nogroup`` -> ``slow_conv_transpose2d``): a depthwise layer's hundreds
    of groups made a lean DA2 step 4x slower there than on torch 2.x; its conv2d (oneDNN) is
    fast. None for a padding wider than the kernel's reach (the form would crop)."""
    kernel = weight.shape[-2:]
    pads = tuple(dilation[i] * (kernel[i] - 1) - padding[i] for i in range(2))
    if min(pads) < 0:
        return None
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    flipped = weight.flip(-2, -1).reshape(groups, out_per_group, in_per_group, *kernel) \
        .transpose(1, 2).reshape(groups * in_per_group, out_per_group, *kernel)
    return F.conv2d(grad, flipped, None, 1, pads, dilation, groups)


class _FrozenConv2d(torch.autograd.Function):
    """conv2d whose weight is frozen: backward needs the weight and the input's shape only."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, pad):
        if pad is not None:
            x = F.pad(x, pad)
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, stride, padding, dilation, groups, pad)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        weight, = ctx.saved_tensors
        shape, stride, padding, dilation, groups, pad = ctx.conf
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv2d_input_grad(shape, weight, grad, stride, padding, dilation, groups)
            grad_x = _crop(grad_x, pad)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, None, grad_bias, None, None, None, None, None


def frozen_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  stride, padding, dilation, groups: int, pad: Pad4 = None) -> torch.Tensor:
    """conv2d that keeps no activation for backward. ``weight`` must not need a gradient;
    ``bias`` may (bias-only tuning flows through it)."""
    if weight.requires_grad:
        raise ValueError("frozen_conv2d needs a frozen weight; train it on the plain path")
    if not _grad_needed(x, bias):
        if pad is not None:
            x = F.pad(x, pad)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return _FrozenConv2d.apply(x, weight, bias, stride, padding, dilation, groups, pad)


class _MaskedActivation(torch.autograd.Function):
    """In-place ReLU (upper=None) or ReLU6 (upper=6) that saves a 1-bit mask.

    Matches autograd's rules: ReLU passes the gradient where the output is > 0, hardtanh
    (ReLU6) where 0 < x < 6.
    """

    @staticmethod
    def forward(ctx, z, upper, grad_exclusive):
        ctx.grad_exclusive = grad_exclusive
        mask = z > 0
        if upper is None:
            z.clamp_(min=0)
        else:
            mask &= z < upper
            z.clamp_(0, upper)
        ctx.mark_dirty(z)
        ctx.shape = z.shape
        ctx.save_for_backward(pack_bits(mask))
        return z

    @staticmethod
    def backward(ctx, grad):
        packed, = ctx.saved_tensors
        bits = unpack_bits(packed, ctx.shape)
        # An exclusive gradient is the consumer conv's fresh output: mask it in place.
        return (grad.mul_(bits) if ctx.grad_exclusive else grad * bits), None, None


def masked_activation_(z: torch.Tensor, upper: Optional[float],
                       grad_exclusive: bool = False) -> torch.Tensor:
    """Apply ReLU / ReLU6 to ``z`` in place; ``z`` must be a fresh tensor nobody saved.

    ``grad_exclusive``: the output's only consumer is a frozen conv, so the gradient that
    arrives is that conv's freshly computed input gradient and may be masked in place.
    """
    if not _grad_needed(z):
        return z.clamp_(min=0) if upper is None else z.clamp_(0, upper)
    return _MaskedActivation.apply(z, upper, grad_exclusive)


def plain_activation(z: torch.Tensor, upper: Optional[float]) -> torch.Tensor:
    """Stock autograd activation, the reference the lean one must match."""
    return F.relu(z) if upper is None else F.hardtanh(z, 0.0, upper)


def pool_kernel(size: Sequence[int], factor: int) -> Tuple[int, int]:
    """Kernel (= stride) of a ceil-mode average pool by ``factor``, clamped to the input."""
    return (min(factor, size[0]), min(factor, size[1]))


class _AvgPool(torch.autograd.Function):
    """Non-overlapping ceil-mode average pool that saves only the input shape."""

    @staticmethod
    def forward(ctx, x, kernel):
        ctx.shape = x.shape
        ctx.kernel = kernel
        return F.avg_pool2d(x, kernel, kernel, 0, ceil_mode=True)

    @staticmethod
    def backward(ctx, grad):
        kh, kw = ctx.kernel
        n, c, height, width = ctx.shape
        out_h, out_w = grad.shape[-2:]
        rows = torch.tensor([min(kh, height - i * kh) for i in range(out_h)],
                            dtype=grad.dtype, device=grad.device)
        cols = torch.tensor([min(kw, width - j * kw) for j in range(out_w)],
                            dtype=grad.dtype, device=grad.device)
        grad = grad / (rows[:, None] * cols[None, :])
        grad_x = grad.new_empty(n, c, out_h * kh, out_w * kw)
        grad_x.view(n, c, out_h, kh, out_w, kw).copy_(grad[:, :, :, None, :, None])
        return grad_x[:, :, :height, :width], None


def avg_pool(x: torch.Tensor, factor: int, lean: bool) -> torch.Tensor:
    kernel = pool_kernel(x.shape[-2:], factor)
    if kernel == (1, 1):
        return x
    if lean and _grad_needed(x):
        return _AvgPool.apply(x, kernel)
    return F.avg_pool2d(x, kernel, kernel, 0, ceil_mode=True)


def index_dtype(plane: int) -> torch.dtype:
    return torch.int16 if plane < 2 ** 15 else torch.int32


class _MaxPool(torch.autograd.Function):
    """max_pool2d that keeps compact argmax positions, not the input and int64 indices."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding):
        out, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
        ctx.shape = x.shape
        ctx.save_for_backward(indices.to(index_dtype(x.shape[-2] * x.shape[-1])))
        return out

    @staticmethod
    def backward(ctx, grad):
        indices, = ctx.saved_tensors
        n, c, h, w = ctx.shape
        planes = grad.reshape(n * c, -1)
        grad_x = grad.new_zeros(n * c, h * w)
        grad_x.scatter_add_(1, indices.reshape(n * c, -1).long(), planes)
        return grad_x.view(n, c, h, w), None, None, None


def max_pool(x: torch.Tensor, kernel: int, stride: int, padding: int, lean: bool) -> torch.Tensor:
    if lean and _grad_needed(x):
        return _MaxPool.apply(x, kernel, stride, padding)
    return F.max_pool2d(x, kernel, stride, padding)


class _Recompute(torch.autograd.Function):
    """Runs ``module(h)`` keeping only ``h``; backward re-runs it to get the gradients.

    For the cheap, low-resolution tail of an adapter branch (attention + expand): its
    intermediates cost more memory than recomputing them costs time.
    """

    @staticmethod
    def forward(ctx, module, h, *params):
        ctx.module = module
        ctx.save_for_backward(h)
        with torch.no_grad():
            return module(h)

    @staticmethod
    def backward(ctx, grad):
        h, = ctx.saved_tensors
        h = h.detach().requires_grad_(True)
        params = [p for p in ctx.module.parameters() if p.requires_grad]
        with torch.enable_grad():
            out = ctx.module(h)
        grads = torch.autograd.grad(out, [h] + params, grad, allow_unused=True)
        return (None,) + tuple(grads)


def recompute(module: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    params = [p for p in module.parameters() if p.requires_grad]
    if not _grad_needed(h, *params):
        return module(h)
    return _Recompute.apply(module, h, *params)


def _block_factors(low: Sequence[int], size: Sequence[int]) -> Tuple[int, int]:
    return (-(-size[0] // low[0]), -(-size[1] // low[1]))


def _block_regions(low: Sequence[int], size: Sequence[int], factors: Tuple[int, int]):
    """Split a ``size`` map into rectangles each tiled by whole cells of one block shape:
    (rows, cols) of the map, (rows, cols) of the low-resolution map, block (height, width)."""
    spans = []
    for length, cells, factor in zip(size, low, factors):
        whole = min(length // factor, cells)
        dim = [((0, whole * factor), (0, whole), factor)] if whole else []
        if whole < cells and whole * factor < length:
            dim.append(((whole * factor, length), (whole, whole + 1), length - whole * factor))
        spans.append(dim)
    for rows, low_rows, fh in spans[0]:
        for cols, low_cols, fw in spans[1]:
            yield rows, cols, low_rows, low_cols, fh, fw


def _block_view(t: torch.Tensor, rows, cols, fh: int, fw: int) -> torch.Tensor:
    region = t[:, :, rows[0]:rows[1], cols[0]:cols[1]]
    n, c = t.shape[:2]
    return region.view(n, c, (rows[1] - rows[0]) // fh, fh, (cols[1] - cols[0]) // fw, fw)


def _add_block_broadcast_(out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    factors = _block_factors(a.shape[-2:], out.shape[-2:])
    regions = _block_regions(a.shape[-2:], out.shape[-2:], factors)
    for rows, cols, low_rows, low_cols, fh, fw in regions:
        cells = a[:, :, low_rows[0]:low_rows[1], low_cols[0]:low_cols[1]]
        _block_view(out, rows, cols, fh, fw).add_(cells[:, :, :, None, :, None])
    return out


class _AddBlockUpsampled(torch.autograd.Function):
    """``out += upsample(a)`` in place, never materialising the upsampled map; saves nothing.
    Its backward for ``a`` is a sum-pool (bilinear's is ~4x slower on CPU)."""

    @staticmethod
    def forward(ctx, out, a):
        ctx.low = a.shape[-2:]
        ctx.mark_dirty(out)
        return _add_block_broadcast_(out, a)

    @staticmethod
    def backward(ctx, grad):
        grad_a = None
        if ctx.needs_input_grad[1]:
            factors = _block_factors(ctx.low, grad.shape[-2:])
            grad_a = F.avg_pool2d(grad, factors, factors, 0, ceil_mode=True, divisor_override=1)
        return grad, grad_a


def add_block_upsampled(out: torch.Tensor, a: torch.Tensor, lean: bool) -> torch.Tensor:
    """``out`` plus ``a`` upsampled by block-nearest: cell (i, j) of ``a`` covers pixels
    [i*fh, (i+1)*fh) x [j*fw, (j+1)*fw) of ``out`` (the inverse of a ceil-mode block pool).
    Lean: added in place into ``out``, which must be a fresh tensor nobody saved."""
    if not lean:
        factors = _block_factors(a.shape[-2:], out.shape[-2:])
        up = a.repeat_interleave(factors[0], dim=2).repeat_interleave(factors[1], dim=3)
        return out + up[:, :, :out.shape[-2], :out.shape[-1]]
    if _grad_needed(out, a):
        return _AddBlockUpsampled.apply(out, a)
    return _add_block_broadcast_(out, a)


def _dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    # Drawn like F.dropout on CPU (bernoulli_ on an empty tensor): same seed, same mask.
    return torch.empty_like(x).bernoulli_(1 - p)


class _PackedDropout(torch.autograd.Function):
    """Dropout that keeps a 1-bit mask (stock CPU dropout keeps a float one)."""

    @staticmethod
    def forward(ctx, x, p):
        keep = _dropout_mask(x, p)
        ctx.p, ctx.shape = p, x.shape
        ctx.save_for_backward(pack_bits(keep.bool()))
        return x * keep.div_(1 - p)

    @staticmethod
    def backward(ctx, grad):
        packed, = ctx.saved_tensors
        return grad * unpack_bits(packed, ctx.shape) / (1 - ctx.p), None


def dropout(x: torch.Tensor, p: float, training: bool, lean: bool) -> torch.Tensor:
    if not training or p == 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    if lean and _grad_needed(x):
        return _PackedDropout.apply(x, p)
    return F.dropout(x, p, training=True)
