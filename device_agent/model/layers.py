"""The canonical network every backbone is converted into.

A backbone is a flat list of *stages*: conv units (conv -> batch norm -> activation), a max
pool, residual blocks and head units. Each stage runs on one of two paths:

- **plain**: stock PyTorch ops; the reference that lean gradients are compared with, and the
  path of full fine-tuning (every weight needs its input);
- **lean**: BN folded into frozen convs that save nothing, 1-bit activation masks, compact
  max-pool indices (lean_ops.py).

Each stage also states, per path, which tensors autograd keeps (``activation_rule``); the
analytic estimator in memory.py adds those up (like TinyTL's profiler, per layer).
"""
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from device_agent.manifest import BackboneSpec
from device_agent.model import lean_ops

ACTIVATIONS = {None: None, "relu": None, "relu6": 6.0}
FP32 = 4


class RunContext(object):
    """What a forward pass needs besides the input: the path, the domain, the BN mode."""

    def __init__(self, lean: bool, domain: Optional[nn.Module] = None,
                 bn_train: bool = False) -> None:
        self.lean = lean
        self.domain = domain
        self.bn_train = bn_train

    def affine(self, key: str) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if self.domain is None:
            return None, None
        return self.domain.affine_for(key)

    def adapter(self, block_index: int) -> Optional[nn.Module]:
        if self.domain is None:
            return None
        return self.domain.adapter_for(block_index)


def activate(z: torch.Tensor, act: Optional[str], lean: bool,
             grad_exclusive: bool = False) -> torch.Tensor:
    if act is None:
        return z
    upper = ACTIVATIONS[act]  # None for ReLU, 6 for ReLU6
    if lean:
        return lean_ops.masked_activation_(z, upper, grad_exclusive)
    return lean_ops.plain_activation(z, upper)


def mask_bytes(numel: int) -> int:
    return (numel + 7) // 8


class ConvUnit(nn.Module):
    """conv -> batch norm -> optional ReLU/ReLU6, holding the backbone's own modules."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[str],
                 same_padding: bool = False) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError("unknown activation %r" % act)
        self.conv = conv
        self.bn = bn
        self.act = act
        self.same_padding = same_padding
        self.key = ""  # set by Backbone: the unit's name in per-domain parameter tables
        # Set by Block: this unit's output feeds only the next unit's frozen conv.
        self.feeds_one_conv = False
        self.register_buffer("folded_weight", None, persistent=False)
        self.register_buffer("folded_bias", None, persistent=False)
        self.register_buffer("normalized_weight", None, persistent=False)
        self.register_buffer("normalized_bias", None, persistent=False)

    @property
    def channels(self) -> int:
        return self.bn.num_features

    def _pad(self, x: torch.Tensor) -> lean_ops.Pad4:
        if not self.same_padding:
            return None
        conv = self.conv
        return lean_ops.same_padding(x.shape[-2:], conv.kernel_size, conv.stride, conv.dilation)

    def forward(self, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        gamma, beta = ctx.affine(self.key)
        if ctx.lean:
            return self._lean(x, gamma, beta)
        return self._plain(x, gamma, beta, ctx.bn_train)

    def _plain(self, x, gamma, beta, bn_train: bool) -> torch.Tensor:
        pad = self._pad(x)
        if pad is not None:
            x = F.pad(x, pad)
        bn = self.bn
        z = F.batch_norm(self.conv(x), bn.running_mean, bn.running_var,
                         bn.weight if gamma is None else gamma,
                         bn.bias if beta is None else beta,
                         bn_train, bn.momentum, bn.eps)
        return activate(z, self.act, lean=False)

    def _lean(self, x, gamma, beta) -> torch.Tensor:
        conv = self.conv
        args = (conv.stride, conv.padding, conv.dilation, conv.groups, self._pad(x))
        if gamma is not None:  # a trainable scale needs the normalized map: keep it, nothing else
            weight, bias = self._normalized()
            z = lean_ops.frozen_conv2d(x, weight, bias, *args)
            z = z * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
        else:
            weight, bias = self._folded()
            if beta is not None:  # bias-only tuning: the domain's beta replaces the BN shift
                bias = bias - self.bn.bias + beta
            z = lean_ops.frozen_conv2d(x, weight, bias, *args)
        return activate(z, self.act, lean=True, grad_exclusive=self.feeds_one_conv)

    def _scale_shift(self, with_affine: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn
        inv_std = torch.rsqrt(bn.running_var + bn.eps)
        scale = inv_std * bn.weight if with_affine else inv_std
        shift = -bn.running_mean * scale
        if with_affine:
            shift = shift + bn.bias
        if self.conv.bias is not None:
            shift = shift + self.conv.bias * scale
        return scale, shift

    @torch.no_grad()
    def _folded(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """BN (with the shared affine) folded into the conv; cached, exact to ~1e-7."""
        if self.folded_weight is None:
            scale, shift = self._scale_shift(with_affine=True)
            self.folded_weight = self.conv.weight * scale.view(-1, 1, 1, 1)
            self.folded_bias = shift
        return self.folded_weight, self.folded_bias

    @torch.no_grad()
    def _normalized(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """BN normalization without its affine, folded into the conv (for trainable gamma)."""
        if self.normalized_weight is None:
            scale, shift = self._scale_shift(with_affine=False)
            self.normalized_weight = self.conv.weight * scale.view(-1, 1, 1, 1)
            self.normalized_bias = shift
        return self.normalized_weight, self.normalized_bias

    def clear_folded(self) -> None:
        """Forget folded weights (call after the backbone's weights change)."""
        self.folded_weight = self.folded_bias = None
        self.normalized_weight = self.normalized_bias = None

    def activation_rule(self, x: torch.Tensor, y: torch.Tensor, ctx: RunContext):
        """(path, storage, bytes) autograd keeps for this unit; storage is a tensor or a tag."""
        gamma, beta = ctx.affine(self.key)
        bn_trains = self.bn.weight.requires_grad
        gamma_trains = bn_trains or (gamma is not None and gamma.requires_grad)
        beta_trains = bn_trains or (beta is not None and beta.requires_grad)
        weight_trains = self.conv.weight.requires_grad
        conv_on = x.requires_grad or weight_trains
        out_on = conv_on or gamma_trains or beta_trains
        padded = self._pad(x) is not None
        size = y.numel() * FP32
        conv_input = ("pad", self) if padded else x
        conv_input_bytes = self._padded_numel(x) * FP32

        if conv_on:
            yield "plain", conv_input, conv_input_bytes
        if out_on:
            yield "plain", ("bn_in", self), size
        if out_on and self.act == "relu":
            yield "plain", y, size
        elif out_on and self.act == "relu6":
            yield "plain", ("act_in", self), size
        if weight_trains:
            yield "minimum", conv_input, conv_input_bytes
        if gamma_trains:
            yield "lean", ("norm", self), size
            yield "minimum", ("norm", self), size
        if out_on and self.act is not None:
            yield "lean", ("mask", self), mask_bytes(y.numel())
            yield "minimum", ("mask", self), y.numel() / 8.0

    def _padded_numel(self, x: torch.Tensor) -> int:
        pad = self._pad(x)
        if pad is None:
            return x.numel()
        left, right, top, bottom = pad
        n, c, h, w = x.shape
        return n * c * (h + top + bottom) * (w + left + right)


class MaxPoolUnit(nn.Module):
    def __init__(self, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return lean_ops.max_pool(x, self.kernel, self.stride, self.padding, ctx.lean)

    def activation_rule(self, x: torch.Tensor, y: torch.Tensor, ctx: RunContext):
        if not x.requires_grad:
            return
        yield "plain", x, x.numel() * FP32
        yield "plain", ("indices", self), y.numel() * 8
        index_type = lean_ops.index_dtype(x.shape[-2] * x.shape[-1])
        yield "lean", ("indices", self), y.numel() * torch.empty(0, dtype=index_type).element_size()
        yield "minimum", ("indices", self), y.numel() / 2.0


class Block(nn.Module):
    """A residual / inverted-residual block: body units, optional shortcut, adapter slot."""

    def __init__(self, body: List[ConvUnit], shortcut: Optional[ConvUnit], residual: bool,
                 out_act: Optional[str], stride: int) -> None:
        super().__init__()
        self.body = nn.ModuleList(body)
        for unit in body[:-1]:
            unit.feeds_one_conv = True
        self.shortcut = shortcut
        self.residual = residual
        self.out_act = out_act
        self.stride = stride
        self.index = -1  # position among the backbone's blocks, set by Backbone
        self.out_stride = stride  # its output's stride relative to the input, set by Backbone

    @property
    def in_channels(self) -> int:
        return self.body[0].conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.body[-1].channels

    def forward(self, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        out = x
        for unit in self.body:
            out = unit(out, ctx)
        if self.residual:
            skip = x if self.shortcut is None else self.shortcut(x, ctx)
            # Lean: the body's output is fresh and unsaved, so the sum can reuse it.
            out = out.add_(skip) if ctx.lean else out + skip
        adapter = ctx.adapter(self.index)
        if adapter is not None:  # additive: nothing on the frozen path is kept for it
            out = adapter(x, out, ctx.lean)
        return activate(out, self.out_act, ctx.lean)

    def activation_rule(self, x: torch.Tensor, y: torch.Tensor, ctx: RunContext):
        if self.out_act is None or not y.requires_grad:
            return
        yield "plain", y, y.numel() * FP32
        yield "lean", ("mask", self), mask_bytes(y.numel())
        yield "minimum", ("mask", self), y.numel() / 8.0


def _stage_stride(stage: nn.Module) -> int:
    if isinstance(stage, ConvUnit):
        return stage.conv.stride[0]
    return stage.stride


class Backbone(nn.Module):
    """A frozen feature extractor as a flat list of stages, ending in global average pooling."""

    def __init__(self, name: str, stages: List[nn.Module], feature_dim: int) -> None:
        super().__init__()
        self.name = name
        self.stages = nn.ModuleList(stages)
        self.feature_dim = feature_dim
        # DA2 settings this backbone's manifest entry sets apart from DA2_DEFAULTS
        self.da2_defaults: Dict[str, object] = {}
        self.spec: Optional[BackboneSpec] = None  # set by build_backbone
        out_stride = 1
        for stage in stages:
            out_stride *= _stage_stride(stage)
            if isinstance(stage, Block):
                stage.out_stride = out_stride
        for index, block in enumerate(self.blocks()):
            block.index = index
        for module_name, module in self.named_modules():
            if isinstance(module, ConvUnit):
                module.key = module_name.replace(".", "_")

    def blocks(self) -> List[Block]:
        return [s for s in self.stages if isinstance(s, Block)]

    def conv_units(self) -> Iterator[ConvUnit]:
        for module in self.modules():
            if isinstance(module, ConvUnit):
                yield module

    def clear_folded(self) -> None:
        for unit in self.conv_units():
            unit.clear_folded()

    def fold(self) -> "Backbone":
        """Fold BN into the frozen convs now (part of loading, not of the first step)."""
        for unit in self.conv_units():
            unit.clear_folded()
            unit._folded()
        return self

    def stage_uses(self, index: int, affine_keys, adapter_blocks) -> bool:
        """Whether stage ``index`` holds anything a domain trains."""
        stage = self.stages[index]
        if isinstance(stage, Block) and stage.index in adapter_blocks:
            return True
        return any(u.key in affine_keys for u in stage.modules() if isinstance(u, ConvUnit))

    def forward(self, x: torch.Tensor, ctx: RunContext, start: int = 0,
                prefix_micro_batch: int = 0) -> torch.Tensor:
        """Features of ``x``. Stages before ``start`` hold nothing trainable: they run
        without autograd, in micro-batches so that their wide early maps stay small."""
        if start > 0:
            with torch.no_grad():
                if 0 < prefix_micro_batch < x.shape[0]:
                    chunks = x.split(prefix_micro_batch)
                    x = torch.cat([self._run(c, ctx, 0, start) for c in chunks])
                else:
                    x = self._run(x, ctx, 0, start)
        x = self._run(x, ctx, start, len(self.stages))
        return x.mean((2, 3))

    def _run(self, x: torch.Tensor, ctx: RunContext, first: int, last: int) -> torch.Tensor:
        for stage in self.stages[first:last]:
            x = stage(x, ctx)
        return x
