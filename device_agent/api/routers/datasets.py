"""Dataset uploads: an ImageFolder archive, unpacked safely into the data dir."""
import os
import tempfile
import uuid

from fastapi import APIRouter, File, Request, UploadFile

from device_agent.api.schemas import DatasetSummary
from device_agent.errors import PayloadTooLarge
from device_agent.store import datasets
from device_agent.store.db import check_domain_name

router = APIRouter(tags=["datasets"])
CHUNK = 1 << 20


@router.post("/domains/{domain}/datasets", status_code=201, response_model=DatasetSummary,
             summary="upload an ImageFolder archive (.zip, .tar, .tar.gz)")
def upload_dataset(domain: str, request: Request, file: UploadFile = File(
        ..., description="train/<class>/* (+ val/<class>/*) or <class>/*")) -> dict:
    check_domain_name(domain)
    state = request.app.state
    settings = state.settings
    os.makedirs(state.paths.uploads, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=state.paths.uploads)
    try:
        _copy_limited(file, handle, settings.max_upload_mb << 20)
        target = os.path.join(state.paths.datasets(domain), uuid.uuid4().hex[:12])
        limits = datasets.Limits(max_files=settings.max_files,
                                 max_extracted_bytes=settings.max_extracted_mb << 20,
                                 max_pixels=settings.max_pixels)
        summary = datasets.ingest(temporary, target, limits)
    except BaseException:
        _remove_if_empty(state.paths.datasets(domain))  # a refused first upload leaves nothing
        raise
    finally:
        os.unlink(temporary)
    state.store.ensure_domain(domain)
    dataset_id = state.store.add_dataset(domain, target, summary)
    return dict(summary, dataset_id=dataset_id, domain=domain)


def _remove_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:  # holds earlier datasets, or was never made
        pass


def _copy_limited(upload: UploadFile, handle: int, limit: int) -> None:
    written = 0
    with os.fdopen(handle, "wb") as out:
        while True:
            chunk = upload.file.read(CHUNK)
            if not chunk:
                return
            written += len(chunk)
            if written > limit:
                raise PayloadTooLarge("upload is over the %d-byte limit" % limit)
            out.write(chunk)
