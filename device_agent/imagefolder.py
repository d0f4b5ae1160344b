"""The ImageFolder rules (stdlib only, Python 3.6 syntax): what an upload is checked against
and what training reads, written once so that the two cannot disagree.

The layout is ``train/<class>/*`` with optional ``val/<class>/*``, or plain ``<class>/*``
(then split by the trainer). Hidden names are never data; an image is known by its file
name's extension (its content is checked by whoever decodes it).
"""
import unicodedata
from typing import Iterable, List

from device_agent.artifacts import check_class_name
from device_agent.errors import ArtifactError, InvalidInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
                    ".tiff")
TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)
MIN_CLASSES = 2
MAX_CLASS_NAME_BYTES = 255  # a directory name's most on ext4 (the label becomes one)


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


def check_label(name: object) -> str:
    """A class name as a sample's label and its snapshot directory, in NFC; InvalidInput
    when it breaks a rule: the adapter's class-name rule (1-255 characters; no control,
    format -- bidi overrides, zero-width -- or separator characters; no '/', '\\', '.' or
    '..'), at most MAX_CLASS_NAME_BYTES in UTF-8, not hidden (ImageFolder skips those), no
    surrounding whitespace ("cat " would be a second class that prints as "cat").
    NFC: an "e" + combining accent and a precomposed "e-acute" are one class (UAX #15)."""
    try:
        check_class_name(name)
    except ArtifactError as exc:
        raise InvalidInput("bad label: %s" % exc.message) from exc
    label = unicodedata.normalize("NFC", str(name))
    if len(label.encode("utf-8", "surrogateescape")) > MAX_CLASS_NAME_BYTES:
        raise InvalidInput("label %r... is over %d bytes in UTF-8"
                           % (label[:40], MAX_CLASS_NAME_BYTES))
    if is_hidden(label) or label != label.strip():
        raise InvalidInput("label %r starts with '.' or has surrounding whitespace"
                           % label[:40])
    return label
