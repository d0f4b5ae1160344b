"""The photo benchmark's networks (benchmarks/photos.py): the project's methods, and the two
peers a user would pick instead, built as that user would build them (issue 15):

- ``peft_lora``: the real ``peft`` package injects LoRA (``LoraConfig``; Hu et al., "LoRA:
  Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685) into
  every non-depthwise conv of the frozen backbone, on stock autograd, head trained;
- ``finetune_ckpt``: ``finetune`` with ``torch.utils.checkpoint`` around every block
  (https://pytorch.org/docs/stable/checkpoint.html): the same gradients, fewer kept maps.

No side effects on import (tests/test_photo_peers.py imports it); ``peft`` is imported only
when LoRA is built (the ``peers`` extra, never a dependency of the agent).
"""
import functools
import inspect
from typing import Callable, List, Optional

import torch
import torch.nn as nn

from device_agent.model.backbones import build_backbone
from device_agent.model.network import AdaptedNet, DomainModule

PEERS = ["peft_lora", "finetune_ckpt"]
# What each peer is built on: the project's method whose domain it starts from.
BASE_METHOD = {"peft_lora": "last", "finetune_ckpt": "finetune"}


def _lora_targets(backbone: nn.Module) -> List[str]:
    """Every conv the backbone holds except depthwise ones (groups > 1: PEFT's Conv2d LoRA
    cannot merge those, and a user targets the pointwise convs that hold the weights)."""
    return [name for name, module in backbone.named_modules()
            if isinstance(module, nn.Conv2d) and module.groups == 1]


def add_peft_lora(net: AdaptedNet, rank: int) -> None:
    """LoRA from the ``peft`` package on the frozen backbone's convs; its matrices are
    registered with the active domain so the trainer optimizes, checkpoints and keeps
    them like any adapter (the base convs stay frozen and shared)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                        target_modules=_lora_targets(net.backbone))
    inject_adapter_in_model(config, net.backbone)
    layers = [m for m in net.backbone.modules() if isinstance(m, LoraLayer)]
    for layer in layers:  # the plain path reads the conv's geometry off the module it calls
        base = layer.get_base_layer()
        for name in ("kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(layer, name, getattr(base, name))
    net.domain.lora = nn.ModuleList([part for layer in layers
                                     for part in (layer.lora_A, layer.lora_B)])


def checkpoint_blocks(net: AdaptedNet) -> None:
    """``torch.utils.checkpoint`` around every block of finetune's own backbone copy: only
    block inputs are kept; each block's forward runs again in backward. The reentrant
    variant, said explicitly where torch has the choice (2.x warns otherwise): it is the only
    one torch 1.10 (JetPack 4) has, and the one the measuring phase's saved-tensor hooks see
    through (the other installs hooks of its own)."""
    from torch.utils.checkpoint import checkpoint

    has_choice = "use_reentrant" in inspect.signature(checkpoint).parameters
    kwargs = {"use_reentrant": True} if has_choice else {}
    for block in net.domain.backbone.blocks():
        block.forward = functools.partial(_checkpointed, checkpoint, block.forward, **kwargs)


def _checkpointed(checkpoint: Callable, forward: Callable, *inputs, **kwargs):
    """Evaluation (grad off) runs the block as it is: there is nothing to recompute, and the
    reentrant checkpoint warns on every such call that no input requires grad."""
    if not torch.is_grad_enabled():
        return forward(*inputs)
    return checkpoint(forward, *inputs, **kwargs)


def build(backbone: str, method: str, classes: int, settings: Optional[dict] = None,
          rank: int = 0, weights: Optional[str] = None,
          frozen: Optional[nn.Module] = None) -> AdaptedNet:
    """``method``'s network on a fresh (or the given shared) frozen backbone."""
    frozen = frozen if frozen is not None else build_backbone(backbone, weights)[0]
    net = AdaptedNet(frozen)
    base = BASE_METHOD.get(method, method)
    net.add_domain(method, DomainModule(frozen, base, classes, settings or None))
    net.set_active(method)
    if method == "peft_lora":
        add_peft_lora(net, rank)
    elif method == "finetune_ckpt":
        checkpoint_blocks(net)
    return net


def lean_path(method: str) -> bool:
    return method != "peft_lora"  # LoRA runs on stock autograd (the plain path)
