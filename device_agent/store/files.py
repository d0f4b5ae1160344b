"""Each domain's files under the data dir -- uploaded datasets, trained and imported
adapters -- kept in step with their records in the store (stdlib only).

Every step that creates, fills or deletes a domain's files and its records together runs
under the domain's lock (:mod:`.locks`), so a DELETE never removes a directory that an
upload or an import is about to record, and a failed step leaves neither files nor records.
"""
import io
import os
import shutil
import tempfile
import uuid
import zipfile
import zlib
from typing import BinaryIO, Callable, Dict, Sequence

from device_agent import artifacts, atomic
from device_agent.errors import InvalidInput, PayloadTooLarge
from device_agent.store import datasets, samples
from device_agent.store.database import Record
from device_agent.store.db import Store, check_domain_name
from device_agent.store.layout import DataPaths
from device_agent.store.locks import domain_lock

CHUNK = 1 << 20


class DomainFiles(object):
    def __init__(self, store: Store, paths: DataPaths) -> None:
        self.store = store
        self.paths = paths

    def add_dataset(self, domain: str, upload: BinaryIO, max_bytes: int,
                    limits: datasets.Limits, relabel: bool = False) -> Dict[str, object]:
        """Copy the uploaded archive (at most ``max_bytes``), unpack it, record it as the
        domain's newest dataset and merge its images into the working set (linked, not
        copied), creating the domain with it; all in one step under the domain's lock.
        Returns its summary with what the merge added."""
        check_domain_name(domain)
        os.makedirs(self.paths.uploads, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.paths.uploads)
        # Unpacked beside the upload, outside the domain: a refused or concurrent upload, or
        # a DELETE meanwhile, never touches a directory another request is writing into.
        staged = os.path.join(self.paths.uploads, ".dataset-" + uuid.uuid4().hex[:12])
        try:
            _copy_limited(upload, handle, max_bytes)
            summary = datasets.ingest(temporary, staged, limits)
        finally:
            os.unlink(temporary)
        target = os.path.join(self.paths.datasets(domain), uuid.uuid4().hex[:12])

        def move_into_place() -> None:  # under the lock: one step against a DELETE
            os.makedirs(self.paths.datasets(domain), exist_ok=True)
            os.rename(staged, target)

        try:
            checked = samples.archive_samples(staged, summary, limits.max_pixels)
            added, dataset_id = self.store.store_samples(
                domain, checked, relabel, dataset=(target, summary), prepare=move_into_place)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            shutil.rmtree(target, ignore_errors=True)
            raise
        return dict(summary, dataset_id=dataset_id, domain=domain, added=added.added,
                    duplicates=added.duplicates, relabeled=added.relabeled)

    def delete_domain(self, domain: str) -> None:
        """The domain's records, then its datasets and adapters (not while an upload or an
        import moves files into it)."""
        with domain_lock(domain):
            self.store.delete_domain(domain)
            for directory in (self.paths.datasets(domain), self.paths.domain(domain)):
                shutil.rmtree(directory, ignore_errors=True)

    def import_adapter(self, domain: str, upload: BinaryIO, max_bytes: int,
                       load: Callable[[str], object]) -> None:
        """Unpack an adapter zip (at most ``max_bytes``), check its two files (torch-free:
        every field and the weights' header, before any value of them can size an
        allocation in the worker), write them, have ``load`` (the worker) load them for
        real, and record them as the domain's active version, creating the domain."""
        check_domain_name(domain)
        files = _unpack_adapter(upload, max_bytes)
        config = artifacts.parse_config(files[artifacts.CONFIG_NAME])
        artifacts.check_weights(files[artifacts.WEIGHTS_NAME], config)
        # adapter_bytes: what a job's own summary has (older adapters' metrics lack it)
        summary = dict(config["metrics"], adapter_bytes=config.get("weights_bytes"),
                       method=config["method"],
                       backbone=config["backbone"]["name"], classes=config["class_names"])
        target = self.paths.adapter(domain, "import-" + uuid.uuid4().hex[:12])
        # Under the domain's lock from the first file to the record: a DELETE meanwhile
        # waits instead of removing files the worker is about to load. All or nothing: the
        # domain is created only together with its version, and the files go on any failure.
        with domain_lock(domain):
            try:
                os.makedirs(target)
                for name, blob in files.items():
                    atomic.write_bytes(os.path.join(target, name), blob)
                load(target)
                self.store.import_adapter(domain, target, summary)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise

    @staticmethod
    def adapter_archive(adapter: Record) -> bytes:
        """An adapter version's files as one zip (what an import takes back)."""
        return zip_files(str(adapter["path"]), artifacts.FILES)

    def export_cache(self, domain: str) -> str:
        """Where the worker caches the domain's exports (keyed by adapter content)."""
        return os.path.join(self.paths.domain(domain), "exports")


def zip_files(directory: str, names: Sequence[str]) -> bytes:
    """``names`` in ``directory`` as one zip, in memory (small files: adapters, exports)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.write(os.path.join(directory, name), name)
    return buffer.getvalue()


def _copy_limited(upload: BinaryIO, handle: int, limit: int) -> None:
    written = 0
    with os.fdopen(handle, "wb") as out:
        while True:
            chunk = upload.read(CHUNK)
            if not chunk:
                return
            written += len(chunk)
            if written > limit:
                raise PayloadTooLarge("upload is over the %d-byte limit" % limit)
            out.write(chunk)


def _unpack_adapter(upload: BinaryIO, limit: int) -> Dict[str, bytes]:
    """Exactly the artifact's two files, nothing else, no paths, within the size limit."""
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge("adapter upload is over the %d-byte limit" % limit)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
        names = sorted(info.filename for info in infos[:10])
        if len(infos) != len(artifacts.FILES) or names != sorted(artifacts.FILES):
            raise InvalidInput("an adapter zip holds exactly %s, this one holds %s"
                               % (", ".join(artifacts.FILES), ", ".join(names[:5]) or "nothing"))
        if sum(info.file_size for info in infos) > limit:
            raise PayloadTooLarge("adapter expands beyond the %d-byte limit" % limit)
        files = {}
        for info in infos:
            with archive.open(info) as source:
                blob = source.read(info.file_size + 1)  # a member that lies is cut off here
            if len(blob) != info.file_size:
                raise InvalidInput("adapter member %s is not the size it declares"
                                   % info.filename)
            files[info.filename] = blob
        return files
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
            zlib.error) as exc:  # corrupt, lying, encrypted or oddly compressed
        raise InvalidInput("not a readable adapter zip: %s" % exc) from exc
