"""Domains: status, deletion, rollback, predictions, adapter export and import."""
import io
import os
import shutil
import uuid
import zipfile
from typing import List

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import Response

from device_agent import artifacts
from device_agent.api.schemas import ActivateRequest, DomainStatus, PredictResponse
from device_agent.api.views import domain_status
from device_agent.errors import Conflict, InvalidInput, PayloadTooLarge
from device_agent.store.db import check_domain_name

router = APIRouter(tags=["domains"])


@router.get("/domains", response_model=List[DomainStatus])
def list_domains(request: Request) -> list:
    store = request.app.state.store
    return [domain_status(store, d["name"]) for d in store.list_domains()]


@router.get("/domains/{domain}", response_model=DomainStatus)
def get_domain(domain: str, request: Request) -> dict:
    return domain_status(request.app.state.store, domain)


@router.delete("/domains/{domain}", status_code=204,
               summary="delete the domain, its datasets, jobs and adapter versions")
def delete_domain(domain: str, request: Request) -> None:
    state = request.app.state
    state.store.delete_domain(domain)
    for directory in (state.paths.datasets(domain), state.paths.domain(domain)):
        shutil.rmtree(directory, ignore_errors=True)


@router.post("/domains/{domain}/activate", response_model=DomainStatus,
             summary="roll the domain back or forward to a kept adapter version")
def activate(domain: str, body: ActivateRequest, request: Request) -> dict:
    request.app.state.store.activate_version(domain, body.version)
    return domain_status(request.app.state.store, domain)


@router.post("/domains/{domain}/predict", response_model=PredictResponse, tags=["predict"],
             summary="classify one or more images with the domain's active adapter")
def predict(domain: str, request: Request, file: List[UploadFile] = File(
        ..., description="one or more images (any Pillow still-image format)"),
            top_k: int = 3) -> dict:
    state = request.app.state
    adapter = state.store.active_adapter(domain)
    if adapter is None:
        raise Conflict("domain %r has no trained adapter yet" % domain)
    if len(file) > state.settings.max_predict_images or not 1 <= top_k <= 100:
        raise InvalidInput("at most %d images and 1 <= top_k <= 100"
                           % state.settings.max_predict_images)
    limit = state.settings.max_upload_mb << 20
    images = [upload.file.read(limit + 1) for upload in file]
    if sum(len(image) for image in images) > limit:
        raise PayloadTooLarge("images are over the %d MB limit" % state.settings.max_upload_mb)
    result = state.supervisor.request("predict", b"".join(images), domain=domain,
                                      adapter_dir=adapter["path"], top_k=top_k,
                                      parts=[len(i) for i in images])
    return dict(result, domain=domain, version=adapter["version"])


@router.get("/domains/{domain}/adapter", tags=["adapters"], response_class=Response,
            responses={200: {"content": {"application/zip": {}}}},
            summary="download the active adapter (config + safetensors, one zip)")
def download_adapter(domain: str, request: Request) -> Response:
    adapter = request.app.state.store.active_adapter(domain)
    if adapter is None:
        raise Conflict("domain %r has no adapter yet" % domain)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in artifacts.FILES:
            archive.write(os.path.join(adapter["path"], name), name)
    filename = "%s-v%d.zip" % (domain, adapter["version"])
    return Response(buffer.getvalue(), media_type="application/zip", headers={
        "Content-Disposition": 'attachment; filename="%s"' % filename})


@router.put("/domains/{domain}/adapter", status_code=201, response_model=DomainStatus,
            tags=["adapters"],
            summary="import an adapter zip; the worker validates it against the backbone")
def import_adapter(domain: str, request: Request, file: UploadFile = File(
        ..., description="a zip of adapter_config.json + adapter_model.safetensors")) -> dict:
    check_domain_name(domain)
    state = request.app.state
    target = state.paths.adapter(domain, "import-" + uuid.uuid4().hex[:12])
    try:
        _unpack_adapter(file, target, state.settings.max_upload_mb << 20)
        loaded = state.supervisor.request("load", domain=domain, adapter_dir=target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    state.store.ensure_domain(domain)
    summary = dict(loaded["metrics"], method=loaded["method"], backbone=loaded["backbone"],
                   classes=loaded["classes"])
    state.store.import_adapter(domain, target, summary)
    return domain_status(state.store, domain)


def _unpack_adapter(upload: UploadFile, target: str, limit: int) -> None:
    """Exactly the artifact's two files, nothing else, no paths, within the size limit."""
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge("adapter upload is over the %d-byte limit" % limit)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = sorted(archive.namelist())
        if names != sorted(artifacts.FILES):
            raise InvalidInput("an adapter zip holds exactly %s, this one holds %s"
                               % (", ".join(artifacts.FILES), ", ".join(names[:5]) or "nothing"))
        if sum(info.file_size for info in archive.infolist()) > limit:
            raise PayloadTooLarge("adapter expands beyond the %d-byte limit" % limit)
        os.makedirs(target)
        for name in artifacts.FILES:
            with archive.open(name) as source, open(os.path.join(target, name), "wb") as out:
                shutil.copyfileobj(source, out)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput("not a readable adapter zip: %s" % exc) from exc
