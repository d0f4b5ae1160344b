"""A domain's working set: labelled images that arrive a few at a time (uploads, archives,
camera capture, the review queue), stored content-addressed and each placed once in train
or val (stdlib and Pillow; never torch).

An image is known by the SHA-256 of its bytes: its file is ``samples/<h[:2]>/<h><ext>``
in the domain's directory, written atomically, so adding the same bytes again stores
nothing new. Its split is a function of that hash alone (:func:`split_for`): the same
image lands in the same split whenever and however it arrives, and never moves once placed
(a later relabel changes its label, not its split). Archives with an explicit ``val/`` keep
their split for the images they bring first.

Adding the same bytes under a different label is a :class:`~device_agent.errors.Conflict`
(409) unless ``relabel`` is asked for; then the image takes the new label and keeps its
split. One request naming the same bytes under two labels is refused (400).
"""
import hashlib
import io
import os
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from device_agent import atomic, bounds
from device_agent.errors import Conflict, InvalidInput, PayloadTooLarge
from device_agent.imagefolder import TRAIN, VAL, check_label
from device_agent.jobspec import PARAM_BY_NAME
from device_agent.manifest import sha256_of
from device_agent.store.database import Database, Record
from device_agent.store.datasets import Limits, image_problem
from device_agent.store.domains import check_domain_name, insert_dataset, insert_domain
from device_agent.store.layout import DataPaths
from device_agent.store.locks import domain_lock
from device_agent.store.snapshots import SnapshotLine

SOURCES = ("upload", "archive", "capture", "review")
# The split rule's salt: a constant, so that a rule change is a new salt (v2), and so that
# the same images give the same snapshot in any domain (and in any agent).
SPLIT_SALT = b"device-agent split v1\n"
VAL_SHARE = float(PARAM_BY_NAME["val_fraction"].default)  # the job contract's default
# Pillow's format names -> the extension its file gets (one ImageFolder reads: imagefolder).
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp",
                     "GIF": ".gif", "WEBP": ".webp", "PPM": ".ppm", "TIFF": ".tif"}
QUERY_CHUNK = 500  # SQLite's bound variables per statement (999 in older builds)


class NewSample(NamedTuple):
    label: str
    data: bytes             # the encoded image file as received/encoded (JPEG/PNG/...)
    source: str = "upload"  # "upload", "archive", "capture", "review" (shown in stats)


class AddedSamples(NamedTuple):
    """What was stored: ``ids`` has each given sample's content hash (sha256 hex), in the
    order given, duplicates included; ``relabeled``: images that took a new label."""
    added: int
    duplicates: int
    ids: List[str]
    relabeled: int = 0


class CheckedSample(NamedTuple):
    """A sample that passed every check, ready to store: its bytes (``data``) or the file
    holding them (``path``: an unpacked archive member, linked rather than copied)."""
    hash: str
    label: str
    source: str
    ext: str
    dhash: int
    size: int
    data: Optional[bytes] = None
    path: Optional[str] = None
    split: Optional[str] = None  # an archive's explicit split; None: the seeded rule


def split_for(content_hash: str, val_share: float = VAL_SHARE) -> str:
    """``val`` for about ``val_share`` of all images, ``train`` for the rest: the first 64
    bits of sha256(salt + hash) as a fraction of 2^64. A function of the content alone."""
    digest = hashlib.sha256(SPLIT_SALT + bytes.fromhex(content_hash)).digest()
    return VAL if int.from_bytes(digest[:8], "big") < val_share * 2.0 ** 64 else TRAIN


def difference_hash(image) -> int:
    """The 64-bit dHash of a Pillow image: grey, 9x8, one bit per pixel that is brighter
    than its right-hand neighbour (N. Krawetz, "Kind of Like That", hackerfactor.com,
    2013). Near-identical images differ in few bits; the Hamming distance compares them."""
    from PIL import Image

    grey = image.convert("L").resize((9, 8), Image.BILINEAR)
    pixels = grey.tobytes()  # one byte per pixel, row by row
    bits = 0
    for row in range(8):
        for col in range(8):
            left, right = pixels[row * 9 + col], pixels[row * 9 + col + 1]
            bits = (bits << 1) | (1 if left > right else 0)
    return bits


def to_sqlite_int(value: int) -> int:
    """An unsigned 64-bit value as SQLite's signed INTEGER (and :func:`from_sqlite_int`)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def from_sqlite_int(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def inspect_image(source, max_pixels: int, what: str) -> Tuple[str, int]:
    """(extension, dHash) of an image (bytes or a path), decoded once under the archive
    upload's check (:func:`device_agent.store.datasets.image_problem`); ImageTooLarge over
    the pixel limit (from the header, before decoding), InvalidInput when unusable."""
    if isinstance(source, bytes):
        bounds.check_image_header(source, max_pixels, what)
        source = io.BytesIO(source)
    seen = {}  # type: Dict[str, object]

    def inspect(image) -> None:
        seen["format"], seen["dhash"] = image.format, difference_hash(image)

    problem = image_problem(source, max_pixels, inspect)
    if problem:
        raise InvalidInput("%s: %s" % (what, problem))
    ext = FORMAT_EXTENSIONS.get(str(seen["format"]))
    if ext is None:
        raise InvalidInput("%s is a %s image; training reads %s" % (
            what, seen["format"], ", ".join(sorted(set(FORMAT_EXTENSIONS)))))
    return ext, int(seen["dhash"])


def check_samples(samples: Sequence[NewSample], limits: Limits) -> List[CheckedSample]:
    """Every sample checked as an archive's members are -- at most ``max_files``, at most
    ``max_extracted_bytes`` in all, each a decodable image within ``max_pixels`` -- and
    its label by the ImageFolder rule; the first failure refuses them all."""
    if not samples:
        raise InvalidInput("no samples given")
    if len(samples) > limits.max_files:
        raise InvalidInput("%d files; the limit is %d" % (len(samples), limits.max_files))
    total = sum(len(s.data) if isinstance(s.data, bytes) else 0 for s in samples)
    if total > limits.max_extracted_bytes:
        raise PayloadTooLarge("%d bytes of images; the limit is %d"
                              % (total, limits.max_extracted_bytes))
    checked = []
    for index, sample in enumerate(samples):
        if sample.source not in SOURCES:
            raise InvalidInput("unknown sample source %r" % (sample.source,))
        if not isinstance(sample.data, bytes):
            raise InvalidInput("sample %d has no image bytes" % index)
        label = check_label(sample.label)
        ext, dhash = inspect_image(sample.data, limits.max_pixels, "image %d" % index)
        checked.append(CheckedSample(hashlib.sha256(sample.data).hexdigest(), label,
                                     sample.source, ext, dhash, len(sample.data),
                                     data=sample.data))
    return checked


def archive_samples(root: str, summary: Dict[str, object],
                    max_pixels: int) -> List[CheckedSample]:
    """The images of an unpacked archive (``root/<split>/<class>/*``, as
    :func:`device_agent.store.datasets.ingest` leaves it) as samples linked from their files;
    an archive with a ``val/`` keeps its split, one without gets the seeded rule."""
    explicit = VAL in summary["counts"]
    checked = []
    for split, labels in sorted(summary["counts"].items()):
        for label in sorted(labels):
            directory = os.path.join(root, split, label)
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                ext, dhash = inspect_image(path, max_pixels, "%s/%s/%s" % (split, label, name))
                checked.append(CheckedSample(sha256_of(path), label, "archive", ext, dhash,
                                             os.path.getsize(path), path=path,
                                             split=split if explicit else None))
    return checked


def _unique(checked: Iterable[CheckedSample]) -> Dict[str, CheckedSample]:
    """The first sample of each hash; InvalidInput when one image comes with two labels."""
    first = {}  # type: Dict[str, CheckedSample]
    for sample in checked:
        seen = first.setdefault(sample.hash, sample)
        if seen.label != sample.label:
            raise InvalidInput("one image (sha256 %s...) is given as both %r and %r"
                               % (sample.hash[:12], seen.label, sample.label))
    return first


def _blob(paths: DataPaths, domain: str, content_hash: str, ext: str) -> str:
    return os.path.join(paths.samples(domain), content_hash[:2], content_hash + ext)


class SampleRecords(Database):
    """The ``samples`` table (the working sets) and ``dataset_samples`` (what each archive
    brought). Files first, then records, under the domain's lock: a record always has its
    file, and a refused request leaves no file behind."""

    sample_limits = Limits()  # the daemon sets the limits of its settings

    @property
    def data_paths(self) -> DataPaths:
        """The data directory this database lives in."""
        return DataPaths(os.path.dirname(os.path.abspath(self.path)))

    def add_samples(self, domain: str, samples: Sequence[NewSample], relabel: bool = False,
                    limits: Optional[Limits] = None) -> AddedSamples:
        """Check ``samples`` (labels, images, limits: :func:`check_samples`), store the new
        ones and place each in train or val (:func:`split_for`), creating the domain with
        its first samples. Conflict when an image is there under another label, unless
        ``relabel``. All or nothing."""
        check_domain_name(domain)
        checked = check_samples(samples, limits or self.sample_limits)
        added, _ = self.store_samples(domain, checked, relabel)
        return added

    def store_samples(self, domain: str, checked: Sequence[CheckedSample], relabel: bool,
                      dataset: Optional[Tuple[str, Dict[str, object]]] = None,
                      prepare: Optional[Callable[[], None]] = None
                      ) -> Tuple[AddedSamples, Optional[int]]:
        """Store checked samples; with ``dataset`` (path, summary) also record the archive
        they came from and its members, in the same transaction (returns its id).
        ``prepare`` runs under the lock once the files are written, before the records
        (an archive moves its unpacked directory into place there)."""
        unique = _unique(checked)
        paths = self.data_paths
        written = []  # type: List[str]
        with domain_lock(domain):
            existing = self._existing(domain, list(unique))
            moved = [s for h, s in unique.items() if h in existing
                     and existing[h]["label"] != s.label]
            if moved and not relabel:
                raise Conflict("%d image(s) are in the working set under another label "
                               "(sha256 %s... is %r, not %r); ask for relabel to move them"
                               % (len(moved), moved[0].hash[:12],
                                  existing[moved[0].hash]["label"], moved[0].label))
            fresh = [s for h, s in unique.items() if h not in existing]
            try:
                for sample in fresh:
                    written.extend(self._write_blob(paths, domain, sample))
                if prepare is not None:
                    prepare()
                dataset_id = self._record(domain, fresh, moved, dataset, unique.values())
            except BaseException:
                for path in written:
                    os.unlink(path)
                raise
        ids = [s.hash for s in checked]
        return AddedSamples(len(fresh), len(checked) - len(fresh), ids, len(moved)), dataset_id

    @staticmethod
    def _write_blob(paths: DataPaths, domain: str, sample: CheckedSample) -> List[str]:
        """The sample's file (none written when it is there already: the same name is the
        same bytes); returns the path it wrote, if any."""
        path = _blob(paths, domain, sample.hash, sample.ext)
        if os.path.exists(path):  # left by a refused request's crash: the same bytes
            return []
        if sample.path is not None:
            atomic.link_or_copy(sample.path, path)
        else:
            atomic.write_bytes(path, sample.data)
        return [path]

    def _record(self, domain: str, fresh: List[CheckedSample], moved: List[CheckedSample],
                dataset: Optional[Tuple[str, Dict[str, object]]],
                members: Iterable[CheckedSample]) -> Optional[int]:
        """The rows, in one transaction; ``members``: every image of the archive (new,
        already there, relabelled), recorded with ``dataset``."""
        now = time.time()
        with self._transaction() as db:
            insert_domain(db, domain)
            db.executemany(
                "INSERT INTO samples (domain, hash, label, split, source, added_at, dhash, "
                "bytes, ext) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(domain, s.hash, s.label, s.split or split_for(s.hash), s.source, now,
                  to_sqlite_int(s.dhash), s.size, s.ext) for s in fresh])
            db.executemany("UPDATE samples SET label = ? WHERE domain = ? AND hash = ?",
                           [(s.label, domain, s.hash) for s in moved])
            if dataset is None:
                return None
            dataset_id = insert_dataset(db, domain, dataset[0], dataset[1])
            db.executemany("INSERT INTO dataset_samples (dataset_id, hash, label) "
                           "VALUES (?, ?, ?)", [(dataset_id, s.hash, s.label) for s in members])
            return dataset_id

    def _existing(self, domain: str, hashes: List[str]) -> Dict[str, Record]:
        found = {}  # type: Dict[str, Record]
        for start in range(0, len(hashes), QUERY_CHUNK):
            chunk = hashes[start:start + QUERY_CHUNK]
            rows = self._read("SELECT hash, label, split FROM samples WHERE domain = ? AND "
                              "hash IN (%s)" % ",".join("?" * len(chunk)), [domain] + chunk)
            found.update((r["hash"], dict(r)) for r in rows)
        return found

    def splits_of(self, domain: str, hashes: List[str]) -> Dict[str, str]:
        """Where each of these images is (hash -> train or val); unknown ones left out."""
        return {h: str(r["split"]) for h, r in self._existing(domain, hashes).items()}

    def working_set(self, domain: str) -> List[Record]:
        """Every sample of the domain (hash, label, split, source, added_at, dhash as an
        unsigned 64-bit int, bytes, ext), oldest first."""
        rows = self._all("SELECT hash, label, split, source, added_at, dhash, bytes, ext "
                         "FROM samples WHERE domain = ? ORDER BY added_at, rowid", (domain,))
        for row in rows:
            row["dhash"] = from_sqlite_int(int(row["dhash"]))
        return rows

    def working_set_lines(self, domain: str) -> List[SnapshotLine]:
        """The working set as snapshot lines (what a job starting now trains)."""
        return [SnapshotLine(r["split"], r["label"], r["hash"], r["ext"]) for r in self._read(
            "SELECT split, label, hash, ext FROM samples WHERE domain = ?", (domain,))]

    def dataset_lines(self, dataset_id: int) -> List[SnapshotLine]:
        """An archive's images as snapshot lines: its labels, each image's working-set split.
        Empty for an archive recorded before the working set existed (schema < 3)."""
        return [SnapshotLine(r["split"], r["label"], r["hash"], r["ext"]) for r in self._read(
            "SELECT s.split, m.label, m.hash, s.ext FROM dataset_samples m "
            "JOIN datasets d ON d.id = m.dataset_id "
            "JOIN samples s ON s.domain = d.domain AND s.hash = m.hash "
            "WHERE m.dataset_id = ?", (dataset_id,))]

    def sample_path(self, domain: str, content_hash: str, ext: str) -> str:
        """Where a sample's file is."""
        return _blob(self.data_paths, domain, content_hash, ext)

