"""ImageFolder datasets for a domain: ``train/<class>/*`` with optional ``val/<class>/*``,
or plain ``<class>/*`` split with a seeded, stratified split.

Images are decoded with Pillow into RGB whatever their mode (palette, CMYK, 16-bit grey,
alpha composited on white); files that are not decodable images are reported, never
silently used.
"""
import math
import os
import random
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from device_agent.errors import InvalidInput
from device_agent.imagefolder import TRAIN, VAL, check_classes, is_hidden, is_image_name

Sample = Tuple[str, int]


class Split(NamedTuple):
    classes: List[str]
    train: List[Sample]
    val: List[Sample]


def _class_dirs(root: str) -> List[str]:
    return sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)) and not is_hidden(d))


def _images_of(directory: str) -> List[str]:
    names = sorted(n for n in os.listdir(directory) if is_image_name(n))
    return [os.path.join(directory, n) for n in names]


def _samples(root: str, classes: Sequence[str]) -> List[Sample]:
    samples = []
    for label, name in enumerate(classes):
        directory = os.path.join(root, name)
        if os.path.isdir(directory):
            samples.extend((path, label) for path in _images_of(directory))
    return samples


def discover(root: str, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Find classes and images under ``root``; the class list is train's, sorted."""
    if not os.path.isdir(root):
        raise InvalidInput("dataset directory %s does not exist" % root)
    train_root = os.path.join(root, TRAIN)
    has_split = os.path.isdir(train_root)
    if not has_split:
        train_root = root
    val_root = os.path.join(root, VAL)
    has_val = has_split and os.path.isdir(val_root)
    classes = check_classes(
        [c for c in _class_dirs(train_root) if _images_of(os.path.join(train_root, c))],
        _class_dirs(val_root) if has_val else [], train_root)
    train = _samples(train_root, classes)
    if has_val:
        return Split(classes, train, _samples(val_root, classes))
    train, val = stratified_split(train, val_fraction, seed)
    return Split(classes, train, val)


def stratified_split(samples: List[Sample], val_fraction: float,
                     seed: int) -> Tuple[List[Sample], List[Sample]]:
    """Per class, a seeded shuffle; ``val_fraction`` of it (at least 1 when the class has
    2+ images) goes to validation."""
    rng = random.Random(seed)
    by_label: Dict[int, List[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample[1], []).append(sample)
    train, val = [], []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        count = int(round(len(group) * val_fraction))
        count = min(max(count, 1 if len(group) > 1 and val_fraction > 0 else 0), len(group) - 1)
        val.extend(group[:count])
        train.extend(group[count:])
    return train, val


def load_rgb(path: str, max_pixels: int = 64 * 1024 * 1024) -> Image.Image:
    """Decode any still-image mode to RGB; alpha is composited on white."""
    with Image.open(path) as image:
        if image.width * image.height > max_pixels:
            raise InvalidInput("%s has %dx%d pixels, over the limit"
                               % (path, image.width, image.height))
        image.seek(0)
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        scale = 1.0 / 256 if image.mode != "I" else 1.0 / 65536
        image = image.point(lambda value: value * scale).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


class TransformSettings(NamedTuple):
    resolution: int
    mean: Sequence[float]
    std: Sequence[float]
    crop_scale: Tuple[float, float] = (0.35, 1.0)
    hflip: bool = True


def train_transform(settings: TransformSettings):
    from torchvision import transforms

    steps = [transforms.RandomResizedCrop(settings.resolution, scale=settings.crop_scale)]
    if settings.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(settings.mean, settings.std)]
    return transforms.Compose(steps)


def eval_transform(settings: TransformSettings):
    """Resize to resolution / 0.875, then center-crop (the usual ImageNet evaluation)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(math.ceil(settings.resolution / 0.875))),
        transforms.CenterCrop(settings.resolution),
        transforms.ToTensor(),
        transforms.Normalize(settings.mean, settings.std),
    ])


class ImageList(Dataset):
    def __init__(self, samples: List[Sample], transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def loader(samples: List[Sample], transform, batch_size: int, shuffle: bool,
           seed: Optional[int] = None) -> torch.utils.data.DataLoader:
    """Single-process loading: deterministic under a seed, and no fork of a big process."""
    generator = None
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(0 if seed is None else seed)
    return torch.utils.data.DataLoader(ImageList(samples, transform), batch_size=batch_size,
                                       shuffle=shuffle, generator=generator, num_workers=0)
