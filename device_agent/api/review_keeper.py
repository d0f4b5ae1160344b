"""Keeping doubtful predictions for review (active learning), off the predict path.

The predict route hands every image whose top probability is under the domain's threshold to
:meth:`ReviewKeeper.offer`, which only filters and queues references to bytes the request
already holds; a background thread writes them (atomically, into the domain's data dir) and
records them in the store's bounded queue, dropping the oldest items over the domain's count
or byte bound. Keeping never fails a prediction: an error is logged and counted, and when the
thread is behind by more than :data:`PENDING_BYTES`, new offers are skipped (counted too).

The images kept are the ones the model was least sure of, the samples worth labelling first
(uncertainty sampling: Settles, "Active Learning Literature Survey", 2009, section 3.1,
https://burrsettles.com/pub/settles.activelearning.pdf). An image is kept as received when it
is a JPEG or PNG of at most :data:`MAX_SIDE` pixels a side and :data:`KEEP_AS_IS_BYTES`
bytes (a camera frame, a typical upload: labelled, it trains on exactly what was predicted);
anything else is re-encoded as a JPEG (quality 90) whose longer side is at most MAX_SIDE, so
that no one item can take more than about a megabyte of the queue.
"""
import io
import logging
import os
import queue
import threading
import uuid
from collections import Counter, defaultdict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from device_agent import atomic
from device_agent.errors import UnknownName
from device_agent.store.datasets import Limits
from device_agent.store.db import Store
from device_agent.store.layout import DataPaths
from device_agent.store.locks import domain_lock
from device_agent.store.review import NewReviewItem, ReviewItem, ReviewSettings
from device_agent.store.samples import AddedSamples, NewSample

log = logging.getLogger("device_agent.review")
REVIEW_TOP = 3  # (class, probability) pairs kept per item
MAX_SIDE = 1024
KEEP_AS_IS_BYTES = 2 << 20
PENDING_BYTES = 32 << 20  # the most image bytes waiting for the keeper's thread
KEPT_FORMATS = {"JPEG": ("image/jpeg", ".jpg"), "PNG": ("image/png", ".png")}
COUNTERS = ("kept", "dropped_oldest", "skipped_busy", "too_large", "failed")
Top = List[Tuple[str, float]]


class ReviewCaps(NamedTuple):
    """The daemon-wide ceilings of every domain's bounds (api/settings.py)."""

    max_items: int
    max_bytes: int


class Offer(NamedTuple):
    domain: str
    version: int
    images: List[Tuple[bytes, Top]]
    size: int


def doubtful(images: Sequence[bytes], predictions: Sequence[Sequence[dict]],
             threshold: float) -> List[Tuple[bytes, Top]]:
    """The images whose top probability is under ``threshold``, each with its top-3."""
    kept = []
    for blob, prediction in zip(images, predictions):
        ranked = sorted(prediction, key=lambda p: -float(p["probability"]))[:REVIEW_TOP]
        if ranked and float(ranked[0]["probability"]) < threshold:
            kept.append((blob, [(str(p["class"]), float(p["probability"])) for p in ranked]))
    return kept


def normalized(blob: bytes) -> Tuple[bytes, str, str]:
    """(bytes, media type, file extension) of the image as it is kept (see the module's
    docstring). The caller checked its pixel count (bounds.read_images)."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        kind = KEPT_FORMATS.get(image.format or "")
        if kind and max(image.size) <= MAX_SIDE and len(blob) <= KEEP_AS_IS_BYTES:
            return blob, kind[0], kind[1]
        image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # a JPEG decodes at a reduced scale
        rgb = image.convert("RGB")
    rgb.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg", ".jpg"


class ReviewKeeper(object):
    """The queue's files and its background writer; one per daemon."""

    def __init__(self, store: Store, paths: DataPaths, caps: ReviewCaps) -> None:
        self.store = store
        self.paths = paths
        self.caps = caps
        self._offers: "queue.Queue[Optional[Offer]]" = queue.Queue()  # None: stop
        self._pending = 0
        self._lock = threading.Lock()  # _pending and the counters
        self._decide = threading.Lock()  # one label or discard at a time
        self._counters: Dict[str, Counter] = defaultdict(Counter)
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="review-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._offers.put(None)
            self._thread.join(timeout=30)

    def bounds(self, settings: ReviewSettings) -> Tuple[int, int]:
        """(items, bytes) the domain may keep: its own bounds under the daemon's caps."""
        return (min(settings.max_items, self.caps.max_items),
                min(settings.max_bytes, self.caps.max_bytes))

    def counters(self, domain: str) -> Dict[str, int]:
        """What happened to the domain's offers since the daemon started."""
        with self._lock:
            counter = self._counters.get(domain, Counter())
            return {name: counter[name] for name in COUNTERS}

    def _count(self, domain: str, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[domain][name] += amount

    def offer(self, domain: str, version: int, images: Sequence[bytes],
              predictions: Sequence[Sequence[dict]]) -> int:
        """Queue the doubtful ones of a prediction's images for keeping, when the domain
        keeps them; how many were queued. Never raises: a prediction never fails for it."""
        try:
            settings = self.store.review_settings(domain)
            if not settings.enabled:
                return 0
            kept = doubtful(images, predictions, settings.threshold)
            size = sum(len(blob) for blob, _ in kept)
            if not kept:
                return 0
            with self._lock:
                if self._pending + size > PENDING_BYTES:
                    self._counters[domain]["skipped_busy"] += len(kept)
                    return 0
                self._pending += size
            self._offers.put(Offer(domain, version, kept, size))
            return len(kept)
        except Exception:
            log.exception("could not offer %s's predictions for review", domain)
            self._count(domain, "failed", len(images))
            return 0

    def _run(self) -> None:
        while True:
            offer = self._offers.get()
            if offer is None:
                return
            try:
                for blob, top in offer.images:
                    self._keep_one(offer.domain, offer.version, blob, top)
            finally:
                with self._lock:
                    self._pending -= offer.size

    def _keep_one(self, domain: str, version: int, blob: bytes, top: Top) -> None:
        try:
            settings = self.store.review_settings(domain)
            if not settings.enabled:  # turned off while the offer waited
                return
            max_items, max_bytes = self.bounds(settings)
            data, media_type, extension = normalized(blob)
            if len(data) > max_bytes:
                self._count(domain, "too_large")
                return
            dropped = self._store_file(domain, NewReviewItem(
                version, top, uuid.uuid4().hex + extension, media_type, len(data)), data,
                max_items, max_bytes)
        except UnknownName:  # the domain was deleted meanwhile
            return
        except Exception:
            log.exception("could not keep a prediction of %s for review", domain)
            self._count(domain, "failed")
            return
        for name in dropped:
            self._unlink(domain, name)
        self._count(domain, "kept")
        self._count(domain, "dropped_oldest", len(dropped))

    def _store_file(self, domain: str, item: NewReviewItem, data: bytes, max_items: int,
                    max_bytes: int) -> List[str]:
        """Write the file and record it, as one step against a DELETE of the domain (which
        removes its directory under the same lock); the files of the items it dropped."""
        with domain_lock(domain):
            self.store.get_domain(domain)  # not recreating the directory of a deleted domain
            path = self.path(domain, item.file)
            atomic.write_bytes(path, data, mode=0o600)
            try:
                return self.store.add_review_item(domain, item, max_items, max_bytes)[1]
            except BaseException:
                os.unlink(path)
                raise

    def directory(self, domain: str) -> str:
        return os.path.join(self.paths.domain(domain), "review")

    def path(self, domain: str, name: str) -> str:
        # basename: a file name in the store never leaves the directory, whatever it holds
        return os.path.join(self.directory(domain), os.path.basename(name))

    def _unlink(self, domain: str, name: str) -> None:
        try:
            os.unlink(self.path(domain, name))
        except FileNotFoundError:
            pass

    def image(self, domain: str, item_id: int) -> Tuple[ReviewItem, bytes]:
        item = self.store.review_item(domain, item_id)
        try:
            with open(self.path(domain, item.file), "rb") as handle:
                return item, handle.read()
        except FileNotFoundError:  # removed by hand, or a concurrent decision took it
            raise UnknownName("review item %d has no image any more" % item_id) from None

    def label(self, domain: str, item_id: int, label: str,
              limits: Limits) -> Tuple[ReviewItem, AddedSamples]:
        """Move the item's image into the domain's samples under ``label`` (checked there,
        with the upload's limits) and out of the queue. A refused label leaves the item
        queued; the image is added before the item goes, so a crash between the two leaves
        it in both (adding the same bytes again is a duplicate, never a second sample)."""
        with self._decide:
            item, data = self.image(domain, item_id)
            added = self.store.add_samples(domain, [NewSample(label, data, "review")],
                                           limits=limits)
            self.store.remove_review_item(domain, item_id)
            self._unlink(domain, item.file)
            return item, added

    def discard(self, domain: str, item_id: int) -> ReviewItem:
        with self._decide:
            item = self.store.remove_review_item(domain, item_id)
            self._unlink(domain, item.file)
            return item
