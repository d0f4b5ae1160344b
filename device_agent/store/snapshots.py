"""Immutable, content-addressed snapshots of a working set: what a job trains (stdlib only).

A snapshot is a set of (split, label, content hash) lines; its id is the SHA-256 of those
lines sorted, one ``split<TAB>label<TAB>hash<LF>`` each, so the same images with the same
labels and splits have the same id however and whenever they arrived. It is materialized
once as an ImageFolder of hard links to the samples' files (copies where links fail) --
``<id>/train/<label>/<hash><ext>``, ``<id>/val/...`` and the lines in ``<id>/snapshot.tsv``
-- so the worker reads it as any dataset. It is built in a staging directory and renamed
into place: a directory named by an id is always complete, and is reused as it is.
"""
import hashlib
import os
import shutil
import tempfile
from typing import Callable, Iterable, List, NamedTuple

from device_agent import atomic
from device_agent.errors import InvalidInput
from device_agent.imagefolder import SPLITS, TRAIN, VAL, check_classes

MANIFEST = "snapshot.tsv"
STAGING_PREFIX = ".staging-"


class SnapshotLine(NamedTuple):
    split: str
    label: str
    hash: str
    ext: str  # the file's extension; not part of the id (the hash names the bytes)


def line_text(line: SnapshotLine) -> str:
    return "%s\t%s\t%s\n" % (line.split, line.label, line.hash)


def snapshot_id(lines: Iterable[SnapshotLine]) -> str:
    """SHA-256 hex of the sorted lines; labels are NFC and hold no tab or newline
    (:func:`device_agent.imagefolder.check_label`), so the text is unambiguous."""
    text = "".join(sorted(line_text(line) for line in lines))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_trainable(lines: List[SnapshotLine]) -> List[str]:
    """The classes (sorted), or InvalidInput when a job could not train these lines: fewer
    than two classes with training images, or a class whose images all fell in val."""
    train = {line.label for line in lines if line.split == TRAIN}
    val = {line.label for line in lines if line.split == VAL}
    only_val = sorted(val - train)
    if only_val:
        raise InvalidInput("class(es) %s have images only in val (the split follows each "
                           "image's content hash); add more images of them"
                           % ", ".join(only_val[:10]))
    return check_classes(train, val, "the working set")


def materialize(root: str, lines: List[SnapshotLine],
                file_of: Callable[[SnapshotLine], str]) -> str:
    """The snapshot's directory under ``root``: the existing one when this id is there,
    else built (``file_of``: a line's sample file) in a staging directory and renamed.
    Staging directories a crash left are removed first (one builder at a time: the daemon's
    job loop)."""
    check_trainable(lines)
    target = os.path.join(root, snapshot_id(lines))
    if os.path.isdir(target):
        return target
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root)
    try:
        for split in SPLITS:  # both, even empty: the worker then keeps this split as it is
            os.makedirs(os.path.join(staging, split))
        for line in lines:
            atomic.link_or_copy(file_of(line), os.path.join(staging, line.split, line.label,
                                                            line.hash + line.ext))
        atomic.write_bytes(os.path.join(staging, MANIFEST), "".join(
            sorted(line_text(line) for line in lines)).encode("utf-8"))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def materialized(root: str, snapshot: str) -> str:
    """An existing snapshot's directory; InvalidInput when it is gone (removed by hand)."""
    target = os.path.join(root, snapshot)
    if not os.path.isfile(os.path.join(target, MANIFEST)):
        raise InvalidInput("snapshot %s is no longer on disk" % snapshot)
    return target


def read_manifest(directory: str) -> List[str]:
    """A materialized snapshot's lines (what a version learned from)."""
    with open(os.path.join(directory, MANIFEST), encoding="utf-8") as handle:
        return handle.read().splitlines()
