"""Backbone weights: found through the model repository, hash-checked before loading."""
import json
import os

import pytest
import torch

from device_agent import manifest
from device_agent.errors import UnknownName, WeightsMismatch, WeightsNotFound
from device_agent.manifest import MODELS_DIR_ENV
from device_agent.model import backbones
from device_agent.model.layers import RunContext


@pytest.fixture
def model_repo(tmp_path, monkeypatch):
    """A models/ directory whose manifest points resnet18 at a file we write ourselves."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    weights = tmp_path / "weights" / "resnet18-test.pth"
    weights.parent.mkdir()
    torch.save(reference.state_dict(), str(weights))
    entry = dict(backbones.load_manifest()["resnet18"], weights_file="resnet18-test.pth")
    entry.pop("sha256_prefix")
    entry["sha256"] = manifest.sha256_of(str(weights))
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1,
                                                        "backbones": {"resnet18": entry}}))
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return reference, weights


def test_weights_are_found_verified_and_loaded(model_repo):
    reference, weights = model_repo
    backbone, info = backbones.build_backbone("resnet18")
    assert info.weights_sha256 == manifest.sha256_of(str(weights)) and backbone.spec is info
    assert all(not p.requires_grad for p in backbone.parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        r = reference
        expected = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
        assert torch.allclose(backbone(x, RunContext(lean=True)), expected.mean((2, 3)),
                              atol=1e-4)


def test_a_tampered_file_is_refused_before_loading(model_repo):
    _, weights = model_repo
    with open(str(weights), "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(WeightsMismatch):
        backbones.build_backbone("resnet18")


def test_a_missing_file_names_itself_and_where_it_was_looked_for(model_repo):
    _, weights = model_repo
    os.remove(str(weights))
    with pytest.raises(WeightsNotFound) as error:
        backbones.build_backbone("resnet18")
    assert "resnet18-test.pth" in error.value.message
    assert "torch-home" in error.value.message


def test_explicit_random_weights_and_unknown_names():
    backbone, info = backbones.build_backbone("mobilenet_v2", backbones.RANDOM)
    assert info.weights_sha256 == "random" and len(backbone.blocks()) == 17
    with pytest.raises(UnknownName):
        backbones.build_backbone("vgg16")


def test_a_state_dict_that_does_not_fit_is_refused():
    backbone = backbones.BUILDERS["resnet18"]()
    with pytest.raises(WeightsMismatch):
        backbones._load_state(backbone, {"conv1.weight": torch.zeros(64, 3, 7, 7)})
