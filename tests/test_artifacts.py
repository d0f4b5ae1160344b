"""Adapters as artifacts: our safetensors against the real package, hostile files,
round trips, backbone checks, and domain isolation on one shared backbone."""
import json
import os
import struct

import pytest
import torch

from device_agent.errors import ArtifactError, UnknownName, WeightsMismatch
from device_agent.model import adapter_io, safetensors_io
from device_agent.model.builder import build_net
from device_agent.model.network import METHODS, AdaptedNet, DomainModule
from device_agent.training.step import make_optimizer, train_step

TENSORS = {"a": torch.randn(3, 4), "b.c": torch.arange(7, dtype=torch.int64),
           "mask": torch.tensor([True, False, True]), "half": torch.randn(2, 2).half(),
           "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5)}


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_round_trip_and_metadata():
    tensors, metadata = safetensors_io.loads(safetensors_io.dumps(TENSORS, {"who": "us"}))
    assert _same(tensors, TENSORS) and metadata == {"who": "us"}


def test_safetensors_interoperates_with_the_reference_package(tmp_path):
    reference = pytest.importorskip("safetensors.torch")
    ours = safetensors_io.dumps(TENSORS, {"k": "v"})
    assert _same(reference.load(bytes(ours)), TENSORS)  # dumps gives a bytearray
    theirs = reference.save(TENSORS, metadata={"k": "v"})
    tensors, metadata = safetensors_io.loads(theirs)
    assert _same(tensors, TENSORS) and metadata == {"k": "v"}


def _blob(header, data=b""):
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@pytest.mark.parametrize("blob", [
    b"", b"\x01\x02", struct.pack("<Q", 1 << 40) + b"{}",
    struct.pack("<Q", 4) + b"nope",
    _blob([1, 2]),
    _blob({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 4),
    _blob({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8),
    _blob({"t": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 1]}}, b"\x00"),
    _blob({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\x00" * 4),
    _blob({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
           "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\x00" * 6),
    _blob({"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\x00" * 5),
    _blob({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 1}}, b"\x00"),
    _blob({"__metadata__": {"k": 1}}),
], ids=lambda b: "len%d" % len(b))
def test_safetensors_rejects_malformed_files(blob):
    with pytest.raises(safetensors_io.SafetensorsError):
        safetensors_io.loads(blob)


def _trained_net(method, classes=3, steps=2, seed=0):
    torch.manual_seed(seed)
    net = build_net("resnet18", method, classes, weights="random", domain="a")
    optimizer = make_optimizer(net, 1e-2)
    x, y = torch.randn(4, 3, 48, 48), torch.arange(4) % classes
    net.train()
    for _ in range(steps):
        train_step(net, optimizer, x, y)
    return net.eval()


@pytest.mark.parametrize("method", list(METHODS))
def test_adapter_round_trip_predicts_identically(method, tmp_path):
    net = _trained_net(method)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        expected = net(x)
    config = adapter_io.save_domain(net, "a", str(tmp_path), ["x", "y", "z"], 48, {"val_top1": 1})
    assert config["method"] == method
    assert config["metrics"] == {"val_top1": 1, "adapter_bytes": config["weights_bytes"]}
    blob = (tmp_path / adapter_io.WEIGHTS_NAME).read_bytes()
    assert not blob.startswith(b"\x80")  # not a pickle
    fresh = AdaptedNet(net.backbone)
    adapter_io.load_domain(fresh, str(tmp_path), "b")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)


def test_an_adapter_saved_before_newer_settings_loads_as_it_was_trained(tmp_path,
                                                                         monkeypatch):
    """A config without min_cells/train_biases means their old values, whatever the
    defaults are now (a default that trained biases would otherwise expect more tensors)."""
    from device_agent.model import adapters

    net = _trained_net("da2")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = net(x)
    config = adapter_io.save_domain(net, "a", str(tmp_path), ["x", "y", "z"], 48)
    for key in adapters.LEGACY_SETTINGS:
        del config["adapter_settings"][key]
    (tmp_path / adapter_io.CONFIG_NAME).write_text(json.dumps(config))
    monkeypatch.setitem(adapters.DA2_DEFAULTS, "train_biases",
                        not adapters.LEGACY_SETTINGS["train_biases"])
    monkeypatch.setitem(adapters.DA2_DEFAULTS, "min_cells", 4)
    fresh = AdaptedNet(net.backbone)
    adapter_io.load_domain(fresh, str(tmp_path), "b")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)


def test_loading_checks_the_backbone_and_the_weights_hash(tmp_path):
    net = _trained_net("da2")
    adapter_io.save_domain(net, "a", str(tmp_path), ["x", "y", "z"], 48)
    other = build_net("mobilenet_v2", "last", 2, weights="random")
    with pytest.raises(WeightsMismatch):
        adapter_io.load_domain(other, str(tmp_path), "b")
    net.backbone.spec = net.backbone_spec._replace(weights_sha256="0" * 64)
    with pytest.raises(WeightsMismatch):
        adapter_io.load_domain(net, str(tmp_path), "b")
    weights = tmp_path / adapter_io.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(ArtifactError):
        adapter_io.load_domain(net, str(tmp_path), "b", check_backbone=False)


def test_loading_rejects_tensors_that_do_not_fit_the_method(tmp_path):
    net = _trained_net("da2")
    config = adapter_io.save_domain(net, "a", str(tmp_path), ["x", "y", "z"], 48)
    config["method"] = "tinytl_bias"
    (tmp_path / adapter_io.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ArtifactError):
        adapter_io.load_domain(net, str(tmp_path), "b")
    (tmp_path / adapter_io.CONFIG_NAME).write_text("{not json")
    with pytest.raises(ArtifactError):
        adapter_io.load_domain(net, str(tmp_path), "b")
    os.remove(str(tmp_path / adapter_io.CONFIG_NAME))
    with pytest.raises(ArtifactError):
        adapter_io.read_config(str(tmp_path))


@pytest.mark.parametrize("method", list(METHODS))
def test_training_domain_b_leaves_domain_a_bit_identical(method):
    net = _trained_net(method)
    x = torch.randn(5, 3, 48, 48)
    with torch.no_grad():
        before = net(x)
    net.add_domain("b", DomainModule(net.backbone, method, 4))
    optimizer = make_optimizer(net, 5e-2)
    net.train()
    for _ in range(3):
        train_step(net, optimizer, torch.randn(4, 3, 48, 48), torch.arange(4))
    net.set_active("a")
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), before)
        assert torch.equal(net(x, lean=False), net(x, lean=False))
    net.set_active("b")
    with torch.no_grad():
        assert not torch.allclose(net(x)[:, :3], before)
    net.remove_domain("b")
    assert net.active is None and list(net.domains) == ["a"]
    with pytest.raises(UnknownName):
        net.set_active("b")
