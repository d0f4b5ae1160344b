"""Many domains on one frozen backbone, switched by name (PEFT's pattern).

A :class:`DomainModule` holds everything one domain trains: its adapters, its batch-norm
affine overrides, its classifier head -- or, for the ``finetune`` baseline only, a whole
private copy of the backbone. The shared backbone is never trained and its batch-norm
statistics never move, so training domain B cannot change domain A's predictions.
"""
import copy
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from device_agent.errors import InvalidInput, UnknownName
from device_agent.manifest import BackboneSpec
from device_agent.model import lean_ops
from device_agent.model.adapters import ADAPTERS, da2_settings
from device_agent.model.layers import Backbone, RunContext


class Method(NamedTuple):
    name: str
    adapter: Optional[str]   # "da2" / "lite_residual" / None
    affine: str              # which BN affine parameters train: "", "beta", "gamma+beta"
    full_copy: bool          # trains every weight (no lean path: each needs its input)


# How each method of the job contract is built (what each trains, in words, and its
# default lr: device_agent.jobspec.METHODS; a test keeps the two lists equal).
METHODS = {m.name: m for m in (
    Method("finetune", None, "", True),
    Method("last", None, "", False),
    Method("bn_last", None, "gamma+beta", False),
    Method("tinytl_bias", None, "beta", False),
    Method("tinytl_lite_residual", "lite_residual", "beta", False),
    Method("da2", "da2", "", False),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UnknownName("unknown method %r; known: %s" % (name, ", ".join(METHODS)))
    return METHODS[name]


class Head(nn.Module):
    """The domain's classifier: dropout (a 1-bit mask on the lean path) and a linear layer."""

    def __init__(self, features: int, classes: int, dropout: float) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise InvalidInput("dropout must be in [0, 1)")
        self.dropout = dropout
        self.linear = nn.Linear(features, classes)

    @property
    def classes(self) -> int:
        return self.linear.out_features

    def forward(self, features: torch.Tensor, lean: bool) -> torch.Tensor:
        return self.linear(lean_ops.dropout(features, self.dropout, self.training, lean))


class DomainModule(nn.Module):
    """The trainable part of one domain."""

    def __init__(self, backbone: Backbone, method: str, num_classes: int,
                 adapter_settings: Optional[Dict[str, object]] = None,
                 train_bn: bool = False, dropout: float = 0.2) -> None:
        super().__init__()
        if num_classes < 2:
            raise InvalidInput("a domain needs at least 2 classes, got %d" % num_classes)
        self.method = get_method(method)
        if adapter_settings and self.method.adapter != "da2":
            raise InvalidInput("adapter settings are for da2, not %s" % method)
        try:
            self.adapter_settings = da2_settings(
                dict(backbone.da2_defaults, **(adapter_settings or {}))) \
                if self.method.adapter == "da2" else {}
        except ValueError as exc:  # InvalidInput for the CLI and the API, not a traceback
            raise InvalidInput(str(exc)) from None
        self.train_bn = bool(train_bn)
        self.adapters = nn.ModuleDict()
        self.affine = nn.ParameterDict()
        self.backbone = None  # type: Optional[Backbone]
        self.head = Head(backbone.feature_dim, num_classes, dropout)
        self._build(backbone)

    def _build(self, backbone: Backbone) -> None:
        method = self.method
        if method.full_copy:
            self.backbone = copy.deepcopy(backbone)
            self.backbone.clear_folded()
            for param in self.backbone.parameters():
                param.requires_grad_(True)
        affine = method.affine
        if self.adapter_settings.get("train_biases"):
            affine = "beta"
        if self.train_bn:
            affine = "gamma+beta"
        for unit in backbone.conv_units() if affine else ():
            if "gamma" in affine:
                self.affine[unit.key + "__gamma"] = nn.Parameter(unit.bn.weight.detach().clone())
            self.affine[unit.key + "__beta"] = nn.Parameter(unit.bn.bias.detach().clone())
        if method.adapter:
            adapter_class = ADAPTERS[method.adapter]
            first = int(self.adapter_settings.get("first_block", 0))
            blocks = list(backbone.blocks())
            if first >= len(blocks):  # no adapter at all: that is `last`, not DA2
                raise InvalidInput("first_block %d is past the last of %s's %d blocks"
                                   % (first, backbone.name, len(blocks)))
            for block in blocks:
                if block.index < first:
                    continue
                self.adapters[str(block.index)] = adapter_class(
                    block.in_channels, block.out_channels, block.stride, block.out_stride,
                    self.adapter_settings)

    def affine_for(self, key: str) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        gamma = self.affine[key + "__gamma"] if key + "__gamma" in self.affine else None
        beta = self.affine[key + "__beta"] if key + "__beta" in self.affine else None
        return gamma, beta

    def adapter_for(self, block_index: int) -> Optional[nn.Module]:
        key = str(block_index)
        return self.adapters[key] if key in self.adapters else None

    def first_trainable_stage(self, backbone: Backbone) -> int:
        """Stages before this index hold nothing this domain trains."""
        if self.backbone is not None:
            return 0
        keys = {k.rsplit("__", 1)[0] for k in self.affine.keys()}
        adapter_blocks = {int(k) for k in self.adapters.keys()}
        for index in range(len(backbone.stages)):
            if backbone.stage_uses(index, keys, adapter_blocks):
                return index
        return len(backbone.stages)

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "DomainModule":
        super().train(mode)
        if self.backbone is not None:  # finetune: BN statistics of its own copy adapt
            self.backbone.train(mode)
        return self


class AdaptedNet(nn.Module):
    """One frozen backbone, any number of domains; ``set_active`` picks the one that runs."""

    def __init__(self, backbone: Backbone, prefix_micro_batch: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.domains = nn.ModuleDict()
        self.active = None  # type: Optional[str]
        self.prefix_micro_batch = prefix_micro_batch

    @property
    def backbone_spec(self) -> BackboneSpec:
        """The backbone's manifest figures and weights digest (what an adapter records)."""
        if self.backbone.spec is None:
            raise InvalidInput("backbone %s was not built from the manifest (build_backbone)"
                               % self.backbone.name)
        return self.backbone.spec

    def add_domain(self, name: str, domain: DomainModule) -> DomainModule:
        self.domains[name] = domain
        self.active = name
        return domain

    def remove_domain(self, name: str) -> None:
        self._domain(name)
        del self.domains[name]
        if self.active == name:
            self.active = None

    def set_active(self, name: str) -> DomainModule:
        domain = self._domain(name)
        self.active = name
        return domain

    def _domain(self, name: str) -> DomainModule:
        if name not in self.domains:
            raise UnknownName("domain %r not found" % name)
        return self.domains[name]

    @property
    def domain(self) -> DomainModule:
        if self.active is None:
            raise UnknownName("no active domain")
        return self.domains[self.active]

    def train(self, mode: bool = True) -> "AdaptedNet":
        """Only domain modules change mode: the shared backbone always runs in eval mode."""
        self.training = mode
        for domain in self.domains.values():
            domain.train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor, lean: bool = True) -> torch.Tensor:
        domain = self.domain
        if domain.backbone is not None:  # finetune has no lean path
            ctx = RunContext(lean=False, domain=domain, bn_train=domain.training)
            features = domain.backbone(x, ctx)
            lean = False
        else:
            ctx = RunContext(lean=lean, domain=domain)
            start = domain.first_trainable_stage(self.backbone) if lean else 0
            features = self.backbone(x, ctx, start, self.prefix_micro_batch)
        return domain.head(features, lean)
