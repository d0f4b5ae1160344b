"""The ImageFolder rules (stdlib only, Python 3.6 syntax): what an upload is checked against
and what training reads, written once so that the two cannot disagree.

The layout is ``train/<class>/*`` with optional ``val/<class>/*``, or plain ``<class>/*``
(then split by the trainer). Hidden names are never data; an image is known by its file
name's extension (its content is checked by whoever decodes it).
"""
from typing import Iterable, List

from device_agent.errors import InvalidInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
                    ".tiff")
TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)
MIN_CLASSES = 2


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    """A visible file whose extension names an image type."""
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def check_classes(train_classes: Iterable[str], val_classes: Iterable[str],
                  where: str = "") -> List[str]:
    """The sorted class list (the label order), or InvalidInput when the classes break a
    rule: at least MIN_CLASSES training classes with images, and no validation class that
    training lacks. ``where``: the directory, for the message."""
    train = sorted(set(train_classes))
    if len(train) < MIN_CLASSES:
        raise InvalidInput("a dataset needs at least %d classes with images%s, found %d"
                           % (MIN_CLASSES, " under " + where if where else "", len(train)))
    stray = sorted(set(val_classes) - set(train))
    if stray:
        raise InvalidInput("val/ has classes missing from train/: %s" % ", ".join(stray[:10]))
    return train
