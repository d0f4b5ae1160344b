"""Backbone builders: plain functions, like torchvision's, described by models/manifest.json.

Each builder returns a frozen :class:`Backbone` in the canonical stage form. Weights come
from a local file: an explicit path, ``models/weights/``, the TORCH_HOME cache, or the
Python package that ships them. Nothing is downloaded at run time; a file is hashed
against the manifest before ``torch.load`` ever sees it (torch 1.10 always unpickles).
"""
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from device_agent.errors import UnknownName, WeightsMismatch, WeightsNotFound
from device_agent.manifest import (  # noqa: F401 (re-exported: the model room's API)
    BackboneSpec,
    backbone_info,
    check_digest,
    find_weights,
    load_manifest,
)
from device_agent.model import safetensors_io
from device_agent.model.layers import Backbone, Block, ConvUnit, MaxPoolUnit

RANDOM = "random"


# --- builders --------------------------------------------------------------------------

def _resnet(tv_model: nn.Module, name: str) -> Backbone:
    stages = [ConvUnit(tv_model.conv1, tv_model.bn1, "relu"), MaxPoolUnit(3, 2, 1)]
    for layer in (tv_model.layer1, tv_model.layer2, tv_model.layer3, tv_model.layer4):
        for block in layer:
            if hasattr(block, "conv3"):  # Bottleneck
                body = [ConvUnit(block.conv1, block.bn1, "relu"),
                        ConvUnit(block.conv2, block.bn2, "relu"),
                        ConvUnit(block.conv3, block.bn3, None)]
                stride = block.conv2.stride[0]
            else:  # BasicBlock
                body = [ConvUnit(block.conv1, block.bn1, "relu"),
                        ConvUnit(block.conv2, block.bn2, None)]
                stride = block.conv1.stride[0]
            shortcut = None
            if block.downsample is not None:
                shortcut = ConvUnit(block.downsample[0], block.downsample[1], None)
            stages.append(Block(body, shortcut, residual=True, out_act="relu", stride=stride))
    return Backbone(name, stages, tv_model.fc.in_features)


def _conv_bn_act(seq: nn.Module) -> ConvUnit:
    return ConvUnit(seq[0], seq[1], "relu6")


def _mobilenet_v2(tv_model: nn.Module, name: str) -> Backbone:
    features = list(tv_model.features)
    stages = [_conv_bn_act(features[0])]
    for block in features[1:-1]:
        layers = list(block.conv)
        body = [_conv_bn_act(seq) for seq in layers[:-2]]
        body.append(ConvUnit(layers[-2], layers[-1], None))
        stride = body[-2].conv.stride[0]
        stages.append(Block(body, None, residual=block.use_res_connect, out_act=None,
                            stride=stride))
    stages.append(_conv_bn_act(features[-1]))
    return Backbone(name, stages, features[-1][1].num_features)


def _torchvision(kind: str) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, kind)
    try:
        return builder(weights=None)
    except TypeError:  # torchvision < 0.13
        return builder(pretrained=False)


def _source_key_map(tv_model: nn.Module, backbone: Backbone) -> Dict[str, str]:
    """torchvision state-dict key -> our key, by module identity (we reuse its modules)."""
    ours = {id(m): n for n, m in backbone.named_modules()}
    mapping = {}
    for name, module in tv_model.named_modules():
        if id(module) in ours and isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            for field in module.state_dict():
                mapping["%s.%s" % (name, field)] = "%s.%s" % (ours[id(module)], field)
    return mapping


def _from_torchvision(kind: str, convert: Callable[[nn.Module, str], Backbone]) -> Backbone:
    tv_model = _torchvision(kind)
    backbone = convert(tv_model, kind)
    backbone.source_keys = _source_key_map(tv_model, backbone)
    return backbone


def resnet18() -> Backbone:
    return _from_torchvision("resnet18", _resnet)


def resnet50() -> Backbone:
    return _from_torchvision("resnet50", _resnet)


def mobilenet_v2() -> Backbone:
    return _from_torchvision("mobilenet_v2", _mobilenet_v2)


def mobilenet_v2_keras() -> Backbone:
    """MobileNetV2 in torchvision's layout, computing as Keras' does: TF "same" padding
    (asymmetric on stride-2 convs) and BN eps 1e-3, for weights converted from Keras."""
    backbone = _from_torchvision("mobilenet_v2", _mobilenet_v2)
    for unit in backbone.conv_units():
        unit.conv.padding = (0, 0)
        unit.same_padding = True
        unit.bn.eps = _KERAS_BN_EPS
    return backbone


# EfficientNet-Lite0 (Tan & Le, 2019; lite variant: ReLU6, no squeeze-excite, fixed stem
# and head): repeats, kernel, stride, expand ratio, in, out -- as in the TF lite builder.
_LITE0_BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                 (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                 (1, 3, 1, 6, 192, 320)]
_LITE_BN_EPS = _KERAS_BN_EPS = 1e-3


def _same_unit(cin: int, cout: int, kernel: int, stride: int, act: Optional[str],
               groups: int = 1) -> ConvUnit:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
    return ConvUnit(conv, nn.BatchNorm2d(cout, eps=_LITE_BN_EPS), act, same_padding=True)


def efficientnet_lite0() -> Backbone:
    stages: List[nn.Module] = [_same_unit(3, 32, 3, 2, "relu6")]
    for repeats, kernel, stride, expand, cin, cout in _LITE0_BLOCKS:
        for i in range(repeats):
            cin_i, stride_i = (cin, stride) if i == 0 else (cout, 1)
            mid = cin_i * expand
            body = []
            if expand != 1:
                body.append(_same_unit(cin_i, mid, 1, 1, "relu6"))
            body.append(_same_unit(mid, mid, kernel, stride_i, "relu6", groups=mid))
            body.append(_same_unit(mid, cout, 1, 1, None))
            residual = stride_i == 1 and cin_i == cout
            stages.append(Block(body, None, residual=residual, out_act=None, stride=stride_i))
    stages.append(_same_unit(320, 1280, 1, 1, "relu6"))
    backbone = Backbone("efficientnet_lite0", stages, 1280)
    backbone.source_keys = {theirs: ours for ours, theirs in _lite_key_map(backbone).items()}
    return backbone


def _lite_key_map(backbone: Backbone) -> Dict[str, str]:
    """Our state-dict key -> its key in the lukemelas-format EfficientNet-Lite file."""
    mapping = {}
    stages = list(backbone.stages)
    pairs = [(stages[0], "_conv_stem", "_bn0"), (stages[-1], "_conv_head", "_bn1")]
    for j, block in enumerate(backbone.blocks()):
        names = [("_expand_conv", "_bn0")] if len(block.body) == 3 else []
        names += [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        for unit, (conv, bn) in zip(block.body, names):
            pairs.append((unit, "_blocks.%d.%s" % (j, conv), "_blocks.%d.%s" % (j, bn)))
    prefix_of = {id(m): n for n, m in backbone.named_modules()}
    for unit, conv, bn in pairs:
        ours = prefix_of[id(unit)]
        mapping[ours + ".conv.weight"] = conv + ".weight"
        for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            mapping["%s.bn.%s" % (ours, field)] = "%s.%s" % (bn, field)
    return mapping


BUILDERS = {
    "efficientnet_lite0": efficientnet_lite0,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_keras": mobilenet_v2_keras,
    "resnet18": resnet18,
    "resnet50": resnet50,
}  # type: Dict[str, Callable[[], Backbone]]


def _torch_load(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):  # converted files: plain tensors, nothing to unpickle
        with open(path, "rb") as handle:
            return safetensors_io.loads(handle.read())[0]
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only; the file's hash was checked first
        return torch.load(path, map_location="cpu")


def _load_state(backbone: Backbone, state: Dict[str, torch.Tensor]) -> None:
    """Load a file's state dict through the builder's key map; every tensor must arrive."""
    mapping = backbone.source_keys  # type: Dict[str, str]
    optional = "num_batches_tracked"  # older torchvision files were saved without it
    missing = [k for k in mapping if k not in state and not k.endswith(optional)]
    if missing:
        raise WeightsMismatch("weights file does not fit %s: %d tensors missing, e.g. %s"
                              % (backbone.name, len(missing), missing[0]))
    backbone.load_state_dict({ours: state[theirs] for theirs, ours in mapping.items()
                              if theirs in state}, strict=False)
    backbone.clear_folded()


def build_backbone(name: str, weights: Optional[str] = None) -> Tuple[Backbone, BackboneSpec]:
    """Build backbone ``name``, frozen, in eval mode.

    ``weights``: None looks for the manifest's file (an error if it is missing), a path
    loads that file (hash-checked), ``"random"`` keeps the random initialization.
    Returns the backbone and its spec (also ``backbone.spec``), with the weights' digest.
    """
    info = backbone_info(name)
    if info["builder"] not in BUILDERS:
        raise UnknownName("backbone %r has no builder %r" % (name, info["builder"]))
    if weights == RANDOM:  # the same untrained network in every process (tests, restarts)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            backbone = BUILDERS[info["builder"]]()
        digest = RANDOM
    else:
        backbone = BUILDERS[info["builder"]]()
        path = weights or find_weights(info)
        if not os.path.isfile(path):
            raise WeightsNotFound("weights file %s does not exist" % path)
        digest = check_digest(info, path)
        _load_state(backbone, _torch_load(path))
    for param in backbone.parameters():
        param.requires_grad_(False)
    backbone.spec = BackboneSpec.from_entry(info, digest)
    backbone.da2_defaults = dict(backbone.spec.da2_settings)
    return backbone.eval().fold(), backbone.spec
