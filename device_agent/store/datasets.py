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
import gzip
import lzma
import os
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from device_agent.artifacts import unsafe_character
from device_agent.errors import InvalidInput
from device_agent.imagefolder import (
    SPLITS,
    TRAIN,
    check_classes,
    check_label,
    is_hidden,
    is_image_name,
)

CHUNK = 1 << 16
MAX_NAME_BYTES = 255            # a path component, as file systems allow
HEADER_READ_LIMIT = 1 << 20     # the largest tar header (long name, pax) read whole
GZIP_RATIO_FLOOR = 16 << 20     # the ratio check starts past this many decompressed bytes
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


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
    """The path's components, or InvalidInput when it could escape the destination or
    cannot be created (a component over 255 bytes fails open() with ENAMETOOLONG)."""
    if not name or "\x00" in name or "\\" in name:
        raise InvalidInput("archive member %r has an unusable name" % name[:80])
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidInput("archive member %r has an absolute path" % name[:80])
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput("archive member %r points outside the archive (..)" % name[:80])
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for p in parts):
        raise InvalidInput("archive member %r has a name over %d bytes"
                           % (name[:80], MAX_NAME_BYTES))
    return parts


class _Counter(object):
    """Counts members and declared bytes as headers stream in, and stops at the first one
    past a limit: a header bomb costs the limit's worth of headers, not all of them."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.files = 0
        self.entries = 0
        self.declared = 0

    def entry(self, size: int, is_file: bool) -> None:
        self.entries += 1
        if self.entries > _max_entries(self.limits):
            raise InvalidInput("archive has over %d entries" % _max_entries(self.limits))
        if not is_file:
            return
        self.files += 1
        self.declared += size
        if self.files > self.limits.max_files:
            raise InvalidInput("archive has more than %d files; the limit is %d"
                               % (self.limits.max_files, self.limits.max_files))
        if self.declared > self.limits.max_extracted_bytes:
            raise InvalidInput("archive expands to more than %d bytes"
                               % self.limits.max_extracted_bytes)


def _max_entries(limits: Limits) -> int:
    """Files and directories together: room for a directory per file, no more."""
    return 2 * limits.max_files + 16


def _zip_entry_count(path: str) -> int:
    """The entry count the end-of-central-directory record declares (zip64 included), read
    before zipfile builds a ZipInfo per entry (1M entries cost ~400 MB)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        tail_start = max(0, size - (1 << 16) - 22)  # the record plus the longest comment
        handle.seek(tail_start)
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise InvalidInput("corrupt zip archive: no end of central directory")
        entries = struct.unpack("<H", tail[at + 10:at + 12])[0]
        locator = at - 20
        if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
            offset = struct.unpack("<Q", tail[locator + 8:locator + 16])[0]
            handle.seek(offset)
            record = handle.read(56)
            if len(record) < 56 or record[:4] != b"PK\x06\x06":
                raise InvalidInput("corrupt zip archive: bad zip64 end record")
            entries = max(entries, struct.unpack("<Q", record[32:40])[0])
        return entries


def _zip_members(archive: zipfile.ZipFile, limits: Limits) -> Iterator[Member]:
    counter = _Counter(limits)
    for info in archive.infolist():
        counter.entry(info.file_size, not info.is_dir())
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput("archive member %r is a symbolic link" % info.filename)
        if info.is_dir():
            _check_name(info.filename)
            continue
        if info.flag_bits & 0x1:
            raise InvalidInput("archive member %r is encrypted" % info.filename[:80])
        if info.compress_type not in ZIP_METHODS:
            raise InvalidInput("archive member %r uses unsupported compression %d"
                               % (info.filename[:80], info.compress_type))
        if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(
                info.compress_size, 1):
            raise InvalidInput("archive member %r expands %d-fold: refused as a zip bomb"
                               % (info.filename, info.file_size // max(info.compress_size, 1)))
        yield Member(info.filename, info.file_size, info)


def _tar_members(archive: tarfile.TarFile, limits: Limits) -> Iterator[Member]:
    counter = _Counter(limits)
    for info in archive:  # streams: each header is read when the previous one is done
        counter.entry(info.size, info.isfile())
        if info.isdir():
            _check_name(info.name)
            continue
        if info.issym() or info.islnk():
            raise InvalidInput("archive member %r is a link" % info.name)
        if not info.isfile():
            raise InvalidInput("archive member %r is a device or special file" % info.name)
        yield Member(info.name, info.size, info)


class _HeaderGuard(object):
    """The tar file as tarfile reads it, refusing any single read over HEADER_READ_LIMIT:
    tarfile reads a GNU long name or a pax header whole, so a member declaring a 500 MB
    name would otherwise be read into memory (extraction reads in CHUNK pieces)."""

    def __init__(self, raw) -> None:
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > HEADER_READ_LIMIT:
            raise InvalidInput("archive has a tar header of over %d bytes" % HEADER_READ_LIMIT)
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.raw.close()


def _gunzip(path: str, target: str, limits: Limits) -> None:
    """Decompress a gzip stream into ``target`` within a budget: no more than the
    extraction limit plus room for every header, and no more than ``max_ratio`` times the
    compressed bytes read once past GZIP_RATIO_FLOOR (a tar of images hardly compresses; a
    tar of headers compresses ~1000-fold). Refused at the first chunk over either."""
    budget = limits.max_extracted_bytes + _max_entries(limits) * 1536 + (1 << 20)
    written = 0
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as stream, \
            open(target, "wb") as out:
        while True:
            try:
                chunk = stream.read(CHUNK)
            except (OSError, EOFError, zlib.error) as exc:
                raise InvalidInput("corrupt tar.gz archive: %s" % exc) from exc
            if not chunk:
                return
            written += len(chunk)
            if written > budget:
                raise InvalidInput("tar.gz expands beyond %d bytes" % budget)
            if written > GZIP_RATIO_FLOOR and written > limits.max_ratio * max(raw.tell(), 1):
                raise InvalidInput("tar.gz expands over %d-fold: refused as a bomb"
                                   % limits.max_ratio)
            out.write(chunk)


def _open(path: str, limits: Limits, workdir: str) -> Tuple[object, List[Member]]:
    """The opened archive and its members, counted and checked while the headers stream;
    a gzip stream is first decompressed (within its budget) into ``workdir``."""
    if zipfile.is_zipfile(path):
        if _zip_entry_count(path) > _max_entries(limits):
            raise InvalidInput("archive has over %d entries" % _max_entries(limits))
        try:
            archive = zipfile.ZipFile(path)
            return archive, list(_zip_members(archive, limits))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise InvalidInput("corrupt zip archive: %s" % exc) from exc
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        plain = os.path.join(workdir, ".archive.tar")
        _gunzip(path, plain, limits)
        path = plain
    raw = open(path, "rb")
    try:
        archive = tarfile.open(fileobj=_HeaderGuard(raw), mode="r:")
        return archive, list(_tar_members(archive, limits))
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError) as exc:
        raw.close()
        raise InvalidInput("not a zip, tar or tar.gz archive (or a corrupt one): %s"
                           % exc) from exc
    except BaseException:
        raw.close()
        raise


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


def _copy_member(archive, member: Member, target: str, budget: List[int]) -> None:
    """One member's bytes into ``target``; a corrupt, lying (bad CRC, short data),
    encrypted or oddly compressed member is the upload's fault: InvalidInput, not a 500."""
    try:
        source = archive.open(member.ref) if isinstance(archive, zipfile.ZipFile) \
            else archive.extractfile(member.ref)
        with source:
            _copy_limited(source, target, member.size, budget)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, RuntimeError,
            ValueError, lzma.LZMAError) as exc:
        raise InvalidInput("archive member %r cannot be read: %s"
                           % (member.name[:80], exc)) from exc


def image_problem(source, max_pixels: int,
                  inspect: Optional[Callable[[object], None]] = None) -> Optional[str]:
    """Why the image at ``source`` (a path or a binary file) is unusable -- over the pixel
    limit (from its header, before decoding), or not decodable to the end -- or None.
    ``inspect`` sees the decoded image (one decode serves the check and, e.g., a hash)."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            if image.width * image.height > max_pixels:
                return "image of %dx%d pixels is over the limit" % (image.width, image.height)
            image.load()
            if inspect is not None:
                inspect(image)
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
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    workdir = tempfile.mkdtemp(prefix=".unpack-", dir=parent)  # a decompressed tar.gz
    try:
        archive, members = _open(archive_path, limits, workdir)
        with archive:
            summary = _extract(archive, members, staging, limits)
        if isinstance(archive, tarfile.TarFile):
            archive.fileobj.close()  # _HeaderGuard's file: tarfile leaves a given one open
        os.rename(staging, dest_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _extract(archive, members: List[Member], staging: str, limits: Limits) -> Dict[str, object]:
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
        bad = unsafe_character(label)
        if bad:  # a class name is shown everywhere: it must print as what it is
            raise InvalidInput("class name %r has a control or bidi character (%s)"
                               % (label[:40], bad))
        if is_hidden(label) or is_hidden(filename):
            declared.setdefault(split, set()).add(label)
            rejected.append({"file": member.name, "reason": "hidden file"})
            continue
        label = check_label(label)  # the samples' rule: one class, one name (NFC)
        declared.setdefault(split, set()).add(label)
        if not is_image_name(filename):
            rejected.append({"file": member.name, "reason": "not an image file name"})
            continue
        directory = os.path.join(staging, split, label)
        os.makedirs(directory, exist_ok=True)
        target = os.path.join(directory, filename)
        _copy_member(archive, member, target, budget)
        problem = image_problem(target, limits.max_pixels)
        if problem:
            os.remove(target)
            rejected.append({"file": member.name, "reason": problem})
            continue
        counts.setdefault(split, {})
        counts[split][label] = counts[split].get(label, 0) + 1
    return _summary(counts, declared, rejected, split_layout)


def _summary(counts, declared, rejected, split_layout: bool) -> Dict[str, object]:
    train = counts.get(TRAIN, {})
    empty = sorted(declared.get(TRAIN, set()) - set(train))
    if empty:
        raise InvalidInput("classes without a usable image: %s" % ", ".join(empty[:10]))
    classes = check_classes(train, counts.get("val", {}))
    return {"classes": classes, "counts": counts, "rejected": rejected,
            "layout": "train/val" if split_layout else "class folders"}
