"""Per-block adapters that are *added* to a frozen block's output.

DA2/DA3 (Yang, Rakin & Fan, arXiv 2012.01362) learns a light-weight additive attention
adapter per block while the backbone stays frozen; "additive" so that nothing on the
frozen path must be kept for backward (https://arxiv.org/abs/2012.01362). The paper's
full text is not available, so the branch below is our design from what is known:

    pool (avg, by ``pool`` x the block's stride) -> 1x1 reduce -> ReLU
      -> attention inside the branch (channel: squeeze-excite; spatial: CBAM-style)
      -> 1x1 expand (zero-initialised, so the adapted net starts as the backbone)
      -> upsample (``block``: each cell back onto the pixels it pooled, the default; or
         ``bilinear``) -> added to the block's pre-activation output.

Every tensor it keeps is at the pooled resolution. TinyTL's lite residual module
(Cai et al. 2020, Eq. 4) is here too, as a baseline.
"""
import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from device_agent.model import lean_ops

FP32 = 4
ATTENTION_FORMS = ("none", "channel", "spatial", "channel+spatial")
DA2_DEFAULTS = {
    "reduction": 4,          # branch width = min(C_in, C_out) / reduction ...
    "min_channels": 8,       # ... clamped to [min_channels, max_channels]
    "max_channels": 128,
    "pool": 4,               # the branch runs at 1/pool of the block's output resolution,
    "min_branch_stride": 32,  # and never finer than 1/32 of the network's input,
    # ... but into no fewer than 4 cells a side where the block's output has them: at low
    # input resolutions (64 px) deep branches would otherwise see 1x1 maps. Chosen on
    # validation accuracy (docs/benchmarks.md); a backbone's manifest entry may override it.
    "min_cells": 4,
    "attention": "channel+spatial",
    "upsample": "block",     # "block": each cell back onto the pixels it pooled; "bilinear"
    # Also train the frozen units' BN shifts (TinyTL-B inside DA2): a bias gradient is the
    # sum of the output gradient, so it keeps no activation.
    "train_biases": False,
    # Adapter depth: adapters only on blocks from this index on. The lean backward then stops
    # at the first adapted block (nothing before it trains), so a later start cuts the
    # backward pass as well as the saved activations (docs/benchmarks-photos.md measures it).
    "first_block": 0,
}
UPSAMPLE_MODES = ("block", "bilinear")
# Settings added after the first release, with the value every adapter saved before them
# was trained with: a saved config that lacks one means this, whatever the default is now.
LEGACY_SETTINGS = {"min_cells": 0, "train_biases": False, "first_block": 0}


def da2_settings(overrides: Dict[str, object]) -> Dict[str, object]:
    unknown = set(overrides) - set(DA2_DEFAULTS)
    if unknown:
        raise ValueError("unknown DA2 adapter settings: %s" % ", ".join(sorted(unknown)))
    settings = dict(DA2_DEFAULTS)
    settings.update(overrides)
    if settings["attention"] not in ATTENTION_FORMS:
        raise ValueError("attention must be one of %s" % ", ".join(ATTENTION_FORMS))
    if settings["upsample"] not in UPSAMPLE_MODES:
        raise ValueError("upsample must be one of %s" % ", ".join(UPSAMPLE_MODES))
    if not isinstance(settings["train_biases"], bool):
        raise ValueError("train_biases must be true or false")
    for key in ("reduction", "min_channels", "max_channels", "pool", "min_branch_stride"):
        if not _is_int(settings[key]) or settings[key] < 1:
            raise ValueError("%s must be a positive integer" % key)
    for key in ("min_cells", "first_block"):
        if not _is_int(settings[key]) or settings[key] < 0:
            raise ValueError("%s must be a non-negative integer" % key)
    return settings


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pooled_size(size: Sequence[int], factor: int) -> Tuple[int, int]:
    kh, kw = lean_ops.pool_kernel(size, factor)
    return (-(-size[0] // kh), -(-size[1] // kw))


class BranchAttention(nn.Module):
    """Channel (squeeze-excite) and/or spatial (CBAM) attention on the branch's hidden map."""

    def __init__(self, channels: int, form: str) -> None:
        super().__init__()
        self.form = form
        if "channel" in form:
            hidden = max(4, channels // 4)
            self.squeeze = nn.Conv2d(channels, hidden, 1)
            self.excite = nn.Conv2d(hidden, channels, 1)
        if "spatial" in form:
            self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if "channel" in self.form:
            weights = self.excite(F.relu(self.squeeze(h.mean((2, 3), keepdim=True))))
            h = h * torch.sigmoid(weights)
        if "spatial" in self.form:
            stats = torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], 1)
            h = h * torch.sigmoid(self.spatial(stats))
        return h

    def saved_bytes(self, numel: int, channels: int, plane: int) -> int:
        """Bytes autograd keeps for one sample (the input itself excluded)."""
        total = 0
        if "channel" in self.form:
            hidden = self.squeeze.out_channels
            total += FP32 * (2 * channels + hidden)  # squeeze input, ReLU out, sigmoid out
            total += FP32 * numel if "spatial" in self.form else 0  # re-weighted map
        if "spatial" in self.form:
            total += FP32 * plane * 4  # amax out, 2-channel stats, sigmoid out
        return total


class DA2Adapter(nn.Module):
    """The DA2 additive attention adapter of one block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, out_stride: int,
                 settings: Dict[str, object]) -> None:
        """``stride``: the block's own; ``out_stride``: its output's, relative to the input."""
        super().__init__()
        width = min(in_channels, out_channels) // int(settings["reduction"])
        width = max(int(settings["min_channels"]), min(int(settings["max_channels"]), width))
        # Early, high-resolution blocks pool harder: every branch map stays as coarse as the
        # deepest stage's, which bounds the pooled inputs the branch must keep.
        coarsest = -(-int(settings["min_branch_stride"]) // out_stride)
        self.stride = stride
        self.output_pool = max(int(settings["pool"]), coarsest)  # output pixels a cell, a side
        self.min_cells = int(settings["min_cells"])
        self.upsample = str(settings["upsample"])
        self.reduce = nn.Conv2d(in_channels, width, 1, bias=True)
        self.tail = nn.Sequential(BranchAttention(width, str(settings["attention"])),
                                  nn.Conv2d(width, out_channels, 1, bias=True))
        nn.init.zeros_(self.tail[1].weight)
        nn.init.zeros_(self.tail[1].bias)

    @property
    def attention(self) -> BranchAttention:
        return self.tail[0]

    def pool_factor(self, size: Sequence[int]) -> int:
        """How much the branch pools the block's input ``x`` of spatial ``size``: by
        output_pool output pixels a cell, but by no more than out_side / min_cells (rounded
        up), so that the branch keeps about min_cells cells a side where the block's output
        has them: small inputs keep some spatial detail."""
        factor = self.output_pool
        if self.min_cells:
            out_side = -(-min(size[-2:]) // self.stride)
            factor = max(1, min(factor, -(-out_side // self.min_cells)))
        return self.stride * factor

    def forward(self, x: torch.Tensor, out: torch.Tensor, lean: bool) -> torch.Tensor:
        """``out`` (the block's output, fresh) plus this adapter's contribution."""
        pool = self.pool_factor(x.shape)
        h = F.relu(self.reduce(lean_ops.avg_pool(x, pool, lean)))
        # Lean: the attention + expand tail keeps only h and is recomputed in backward.
        a = lean_ops.recompute(self.tail, h) if lean else self.tail(h)
        if self.upsample == "block":
            return lean_ops.add_block_upsampled(out, a, lean)
        return out + F.interpolate(a, size=tuple(out.shape[-2:]), mode="bilinear",
                                   align_corners=False)

    def activation_rule(self, x: torch.Tensor, result: torch.Tensor, block_output=None):
        """(path, storage, bytes) the branch keeps; called by memory.py's forward hook."""
        pool = self.pool_factor(x.shape)
        height, width = _pooled_size(x.shape[-2:], pool)
        pooled = x.shape[0] * x.shape[1] * height * width
        hidden = x.shape[0] * self.reduce.out_channels * height * width
        pooled_is_x = lean_ops.pool_kernel(x.shape[-2:], pool) == (1, 1)
        if x.requires_grad and not pooled_is_x:
            yield "plain", x, x.numel() * FP32  # avg_pool2d keeps its whole input
        tail = self.attention.saved_bytes(hidden, self.reduce.out_channels,
                                          x.shape[0] * height * width)
        if self.attention.form != "none":
            tail += hidden * FP32  # the expand conv's input
        for path in ("plain", "lean", "minimum"):
            yield path, (x if pooled_is_x else ("pooled", self)), pooled * FP32
            yield path, ("hidden", self), hidden * FP32  # the reduce ReLU's output
        yield "plain", ("tail", self), tail


class LiteResidual(nn.Module):
    """TinyTL's lite residual module: pool 2 -> group conv k5 -> norm -> ReLU -> 1x1 ->
    norm (zero scale) -> upsample, added to the block. GroupNorm (8 channels a group)
    as in TinyTL, which avoids batch statistics at batch 8; groups of <= 32 channels keep
    its size sane on 2048-channel ResNet-50 blocks."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, out_stride: int,
                 settings: Dict[str, object]) -> None:
        # out_stride and settings are unused: every adapter class takes the same arguments.
        super().__init__()
        groups = 2 if in_channels <= 64 else in_channels // math.gcd(in_channels, 32)
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, in_channels, 5, stride, 2, groups=groups, bias=False)
        self.norm = nn.GroupNorm(_norm_groups(in_channels), in_channels)
        self.project = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.final_norm = nn.GroupNorm(_norm_groups(out_channels), out_channels)
        nn.init.zeros_(self.final_norm.weight)

    def forward(self, x: torch.Tensor, out: torch.Tensor, lean: bool) -> torch.Tensor:
        h = F.relu(self.norm(self.conv(lean_ops.avg_pool(x, 2, lean))))
        a = self.final_norm(self.project(h))
        return out + F.interpolate(a, size=tuple(out.shape[-2:]), mode="bilinear",
                                   align_corners=False)

    def activation_rule(self, x: torch.Tensor, result: torch.Tensor, block_output=None):
        """(path, storage, bytes) the branch keeps; called by memory.py's forward hook."""
        height, width = _pooled_size(x.shape[-2:], 2)
        pooled_is_x = lean_ops.pool_kernel(x.shape[-2:], 2) == (1, 1)
        conv_h, conv_w = -(-height // self.stride), -(-width // self.stride)
        batch = x.shape[0]
        mid = batch * self.conv.out_channels * conv_h * conv_w
        out_numel = batch * self.project.out_channels * conv_h * conv_w
        if x.requires_grad and not pooled_is_x:
            yield "plain", x, x.numel() * FP32
        pooled = batch * x.shape[1] * height * width * FP32
        own = FP32 * (2 * mid + out_numel)  # conv out (norm input), ReLU out, project out
        for path in ("plain", "lean", "minimum"):
            yield path, (x if pooled_is_x else ("pooled", self)), pooled
            yield path, ("branch", self), own


def _norm_groups(channels: int) -> int:
    return channels // 8 if channels % 8 == 0 else 1


ADAPTERS = {"da2": DA2Adapter, "lite_residual": LiteResidual}
