"""Dataset uploads: an ImageFolder archive, unpacked safely into the data dir."""
import os
import shutil
import tempfile
import uuid

from fastapi import APIRouter, File, Request, UploadFile

from device_agent.api.schemas import DatasetSummary
from device_agent.errors import PayloadTooLarge
from device_agent.store import datasets
from device_agent.store.db import check_domain_name
from device_agent.store.locks import domain_lock

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
    # Unpacked beside the upload, outside the domain: a refused or concurrent upload, or a
    # DELETE meanwhile, never touches a directory another request is writing into.
    staged = os.path.join(state.paths.uploads, ".dataset-" + uuid.uuid4().hex[:12])
    try:
        _copy_limited(file, handle, settings.max_upload_mb << 20)
        limits = datasets.Limits(max_files=settings.max_files,
                                 max_extracted_bytes=settings.max_extracted_mb << 20,
                                 max_pixels=settings.max_pixels)
        summary = datasets.ingest(temporary, staged, limits)
    finally:
        os.unlink(temporary)
    target = os.path.join(state.paths.datasets(domain), uuid.uuid4().hex[:12])
    try:
        with domain_lock(domain):  # the move and the record, as one step against DELETE
            os.makedirs(state.paths.datasets(domain), exist_ok=True)
            os.rename(staged, target)
            dataset_id = state.store.add_dataset(domain, target, summary, create_domain=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        raise
    return dict(summary, dataset_id=dataset_id, domain=domain)


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
