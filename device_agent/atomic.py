"""Atomic file writes (stdlib only, Python 3.6 syntax; a ground-floor module both columns use).

A reader sees either the old file or the new one, never a torn write: the bytes go to a
temporary file in the same directory, are fsynced, renamed over the target, and the
directory entry is fsynced too, so the rename survives a power cut.
"""
import json
import os
import shutil
import tempfile
import uuid
from typing import Any


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes, mode: int = 0o644) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def write_json(path: str, value: Any, mode: int = 0o644) -> None:
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    write_bytes(path, text.encode("utf-8"), mode)


def link_or_copy(source: str, path: str) -> None:
    """``path`` becomes the same bytes as ``source``, atomically: a hard link (no second copy
    on disk) where the file system allows one, else an fsynced copy; made under a temporary
    name and renamed into place, so a reader never sees a half-copied file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".tmp-%s-%s" % (uuid.uuid4().hex[:12], os.path.basename(path)))
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or one without links (FAT on an SD card)
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
