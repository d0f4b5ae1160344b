"""Warm start (issue 14), torch side: a job's new domain starts from the active adapter's
weights exactly when the adapter is the same model (classes, method, shapes), and is left
as a fresh one otherwise, with the reason said."""
import json
import os

import pytest

torch = pytest.importorskip("torch")

from device_agent.jobspec import TrainParams  # noqa: E402
from device_agent.model.adapter_io import save_domain  # noqa: E402
from device_agent.model.backbones import build_backbone  # noqa: E402
from device_agent.model.network import AdaptedNet  # noqa: E402
from device_agent.training.job import add_job_domain, warm_start  # noqa: E402

CLASSES = ["blue", "green", "red"]
PARAMS = TrainParams.from_mapping({"backbone": "resnet18", "method": "da2", "seed": 1,
                                   "warm_start": True})


@pytest.fixture(scope="module")
def backbone():
    frozen, _ = build_backbone("resnet18", "random")
    return frozen


@pytest.fixture
def adapter_dir(tmp_path, backbone):
    """A saved da2 domain whose weights moved off any initial values."""
    net = AdaptedNet(backbone)
    domain = add_job_domain(net, "old", PARAMS._replace(seed=7), len(CLASSES))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in domain.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    path = str(tmp_path / "adapter")
    save_domain(net, "old", path, CLASSES, 32)
    return path, {k: v.clone() for k, v in domain.state_dict().items()}


def _fresh(backbone, params=PARAMS, classes=CLASSES):
    net = AdaptedNet(backbone)
    domain = add_job_domain(net, "job", params, len(classes))
    return net, {k: v.clone() for k, v in domain.state_dict().items()}


def _equal(left, right):
    return set(left) == set(right) and all(torch.equal(left[k], right[k]) for k in left)


def test_same_classes_start_from_the_adapter_weights(backbone, adapter_dir):
    path, saved = adapter_dir
    net, fresh = _fresh(backbone)
    assert not _equal(fresh, saved)
    result = warm_start(net, "job", path, CLASSES, PARAMS)
    assert result.used and "same 3 classes" in result.note
    assert _equal(net.domains["job"].state_dict(), saved)  # step 0 is the adapter
    assert list(net.domains) == ["job"] and net.active == "job"  # the loaded copy is gone


@pytest.mark.parametrize("classes,params,reason", [
    (["blue", "green", "yellow"], PARAMS, "classes"),
    (["blue", "green", "red", "white"], PARAMS, "classes"),
    (["green", "blue", "red"], PARAMS, "classes"),  # another label order is another head
    (CLASSES, PARAMS._replace(method="last"), "is da2, this job last"),
    (CLASSES, PARAMS._replace(adapter_settings={"reduction": 2}), "does not fit"),
])
def test_another_model_starts_fresh_and_says_why(backbone, adapter_dir, classes, params,
                                                 reason):
    path, _ = adapter_dir
    net, fresh = _fresh(backbone, params, classes)
    result = warm_start(net, "job", path, classes, params)
    assert not result.used and reason in result.note and "scratch" in result.note
    assert _equal(net.domains["job"].state_dict(), fresh)
    assert list(net.domains) == ["job"] and net.active == "job"


def test_no_or_a_broken_or_foreign_adapter_starts_fresh(backbone, adapter_dir, tmp_path):
    net, fresh = _fresh(backbone)
    assert "no active adapter" in warm_start(net, "job", "", CLASSES, PARAMS).note
    path, _ = adapter_dir
    config_path = os.path.join(path, "adapter_config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    with open(config_path, "w") as handle:  # trained on other backbone weights
        json.dump(dict(config, backbone=dict(config["backbone"], weights_sha256="0" * 64)),
                  handle)
    result = warm_start(net, "job", path, CLASSES, PARAMS)
    assert not result.used and "cannot be loaded" in result.note and "weights" in result.note
    with open(config_path, "w") as handle:
        json.dump(config, handle)
    with open(os.path.join(path, "adapter_model.safetensors"), "r+b") as handle:
        handle.write(b"\xff" * 16)  # its hash no longer matches the config's
    result = warm_start(net, "job", path, CLASSES, PARAMS)
    assert not result.used and "scratch" in result.note
    assert _equal(net.domains["job"].state_dict(), fresh)
