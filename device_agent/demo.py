"""The demo domain: real handwritten digits (UCI, shipped inside scikit-learn's wheel)
written out as an ImageFolder with a fixed, seeded split. No network is needed."""
import os
from typing import Dict, Optional

from device_agent.errors import InvalidInput

# The domain's name: the daemon seeds it (api/demo.py), the client's demo command follows it.
DEMO_DOMAIN = "digits"


def write_digits_folder(root: str, seed: int = 0, val_fraction: float = 0.2,
                        per_class: Optional[int] = None) -> Dict[str, int]:
    """``root``/train/<digit>/*.png and ``root``/val/<digit>/*.png; returns the counts.
    ``per_class``: at most this many images of each digit (a quick job's data)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise InvalidInput("the demo's data ships in scikit-learn: pip install scikit-learn "
                           "(or: pip install -e '.[demo]')") from exc
    import numpy as np
    from PIL import Image

    digits = load_digits()
    order = np.random.RandomState(seed).permutation(len(digits.target))
    counts = {"train": 0, "val": 0}
    seen = {}  # type: Dict[int, int]
    for index in order:
        label = int(digits.target[index])
        position = seen.get(label, 0)
        if per_class is not None and position >= per_class:
            continue
        seen[label] = position + 1
        split = "val" if position % int(round(1 / val_fraction)) == 0 else "train"
        directory = os.path.join(root, split, str(label))
        os.makedirs(directory, exist_ok=True)
        pixels = (digits.images[index] * (255.0 / 16.0)).astype("uint8")
        path = os.path.join(directory, "%04d.png" % index)
        if not os.path.exists(path):
            Image.fromarray(pixels, mode="L").save(path)
        counts[split] += 1
    return counts
