"""Unpack an uploaded dataset archive into the data directory, safely.

``.zip``, ``.tar`` and ``.tar.gz`` are recognised by content, not by extension. The layout
is ``train/<class>/*`` with optional ``val/<class>/*``, or ``<class>/*``; one wrapping
top-level directory is stripped.

Refused outright (the upload is hostile or unusable): path traversal, absolute paths,
links, device files and other special members, too many files, too many bytes, a
compression ratio of a zip bomb, fewer than two classes, a class without usable images,
validation classes missing from training. Listed as rejected (the rest is kept): files
outside a class directory, hidden files, non-image or corrupt files, images over the pixel
limit. Extraction goes to a staging directory that is renamed into place only when
everything succeeded, and removed otherwise: nothing half-written is ever left behind.
"""
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from device_agent.errors import InvalidInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
                    ".tiff")
SPLITS = ("train", "val")
CHUNK = 1 << 16


class Limits(NamedTuple):
    max_files: int = 50000
    max_extracted_bytes: int = 2 << 30
    max_pixels: int = 40000000       # e.g. 8000 x 5000
    max_ratio: int = 200              # uncompressed / compressed, per zip member over 1 MiB


class Member(NamedTuple):
    name: str
    size: int
    ref: object  # the ZipInfo or TarInfo


def _check_name(name: str) -> List[str]:
    """The path's components, or InvalidInput when it could escape the destination."""
    if not name or "\x00" in name or "\\" in name:
        raise InvalidInput("archive member %r has an unusable name" % name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidInput("archive member %r has an absolute path" % name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput("archive member %r points outside the archive (..)" % name)
    return parts


def _zip_members(archive: zipfile.ZipFile, limits: Limits) -> Iterator[Member]:
    for info in archive.infolist():
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput("archive member %r is a symbolic link" % info.filename)
        if info.is_dir():
            _check_name(info.filename)
            continue
        if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(
                info.compress_size, 1):
            raise InvalidInput("archive member %r expands %d-fold: refused as a zip bomb"
                               % (info.filename, info.file_size // max(info.compress_size, 1)))
        yield Member(info.filename, info.file_size, info)


def _tar_members(archive: tarfile.TarFile) -> Iterator[Member]:
    for info in archive.getmembers():
        if info.isdir():
            _check_name(info.name)
            continue
        if info.issym() or info.islnk():
            raise InvalidInput("archive member %r is a link" % info.name)
        if not info.isfile():
            raise InvalidInput("archive member %r is a device or special file" % info.name)
        yield Member(info.name, info.size, info)


def _open(path: str, limits: Limits) -> Tuple[object, List[Member]]:
    if zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
            return archive, list(_zip_members(archive, limits))
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidInput("corrupt zip archive: %s" % exc) from exc
    try:
        archive = tarfile.open(path, mode="r:*")
        return archive, list(_tar_members(archive))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidInput("not a zip, tar or tar.gz archive (or a corrupt one): %s"
                           % exc) from exc


def _strip_wrapper(members: List[Tuple[List[str], Member]]) -> List[Tuple[List[str], Member]]:
    """Drop one top-level directory that wraps everything (``mydata/cats/1.png``)."""
    tops = {parts[0] for parts, _ in members}
    if len(tops) == 1 and list(tops)[0] not in SPLITS and any(len(p) > 2 for p, _ in members):
        return [(parts[1:], m) for parts, m in members]
    return members


def _placement(parts: List[str], split_layout: bool) -> Optional[Tuple[str, str, str]]:
    """(split, class, file name) for a member, or None when it is not in a class dir."""
    if split_layout:
        if len(parts) == 3 and parts[0] in SPLITS:
            return parts[0], parts[1], parts[2]
        return None
    return ("train", parts[0], parts[1]) if len(parts) == 2 else None


def _copy_limited(source, target: str, size: int, budget: List[int]) -> None:
    written = 0
    with open(target, "wb") as handle:
        while True:
            chunk = source.read(CHUNK)
            if not chunk:
                break
            written += len(chunk)
            budget[0] -= len(chunk)
            if written > size or budget[0] < 0:  # the archive lied about a member's size
                raise InvalidInput("archive expands beyond its declared sizes or the limit")
            handle.write(chunk)


def _image_problem(path: str, max_pixels: int) -> Optional[str]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                return "image of %dx%d pixels is over the limit" % (image.width, image.height)
            image.load()
    except Image.DecompressionBombError:
        return "image dimensions are over the limit"
    except (OSError, ValueError, SyntaxError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return "not a readable image (%s)" % detail
    return None


def ingest(archive_path: str, dest_dir: str, limits: Limits = Limits()) -> Dict[str, object]:
    """Unpack ``archive_path`` into ``dest_dir`` (which must not exist); returns the summary
    ``{classes, counts: {split: {class: n}}, rejected: [{file, reason}], layout}``."""
    if os.path.exists(dest_dir):
        raise InvalidInput("dataset directory %s already exists" % dest_dir)
    parent = os.path.dirname(os.path.abspath(dest_dir))
    os.makedirs(parent, exist_ok=True)
    archive, members = _open(archive_path, limits)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    try:
        with archive:
            summary = _extract(archive, members, staging, limits)
        os.rename(staging, dest_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _extract(archive, members: List[Member], staging: str, limits: Limits) -> Dict[str, object]:
    if len(members) > limits.max_files:
        raise InvalidInput("archive has %d files; the limit is %d"
                           % (len(members), limits.max_files))
    if sum(m.size for m in members) > limits.max_extracted_bytes:
        raise InvalidInput("archive expands to more than %d bytes" % limits.max_extracted_bytes)
    named = _strip_wrapper([(_check_name(m.name), m) for m in members])
    split_layout = any(parts[0] in SPLITS and len(parts) == 3 for parts, _ in named)
    rejected = []  # type: List[Dict[str, str]]
    counts = {}  # type: Dict[str, Dict[str, int]]
    declared = {}  # type: Dict[str, set]
    budget = [limits.max_extracted_bytes]
    for parts, member in named:
        place = _placement(parts, split_layout)
        if place is None:
            rejected.append({"file": member.name, "reason": "not inside a class directory"})
            continue
        split, label, filename = place
        declared.setdefault(split, set()).add(label)
        if label.startswith(".") or filename.startswith("."):
            rejected.append({"file": member.name, "reason": "hidden file"})
            continue
        if not filename.lower().endswith(IMAGE_EXTENSIONS):
            rejected.append({"file": member.name, "reason": "not an image file name"})
            continue
        directory = os.path.join(staging, split, label)
        os.makedirs(directory, exist_ok=True)
        target = os.path.join(directory, filename)
        source = archive.open(member.ref) if isinstance(archive, zipfile.ZipFile) \
            else archive.extractfile(member.ref)
        with source:
            _copy_limited(source, target, member.size, budget)
        problem = _image_problem(target, limits.max_pixels)
        if problem:
            os.remove(target)
            rejected.append({"file": member.name, "reason": problem})
            continue
        counts.setdefault(split, {})
        counts[split][label] = counts[split].get(label, 0) + 1
    return _summary(counts, declared, rejected, split_layout)


def _summary(counts, declared, rejected, split_layout: bool) -> Dict[str, object]:
    train = counts.get("train", {})
    empty = sorted(declared.get("train", set()) - set(train))
    if empty:
        raise InvalidInput("classes without a usable image: %s" % ", ".join(empty[:10]))
    if len(train) < 2:
        raise InvalidInput("a dataset needs at least 2 classes with images, found %d" % len(train))
    stray = sorted(set(counts.get("val", {})) - set(train))
    if stray:
        raise InvalidInput("val/ has classes missing from train/: %s" % ", ".join(stray[:10]))
    return {"classes": sorted(train), "counts": counts, "rejected": rejected,
            "layout": "train/val" if split_layout else "class folders"}
