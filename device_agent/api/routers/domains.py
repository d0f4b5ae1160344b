"""Domains: status, deletion, rollback, predictions, adapter export and import."""
import io
import os
import shutil
import uuid
import zipfile
import zlib
from typing import Dict, List

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import Response

from device_agent import artifacts, bounds
from device_agent.api.schemas import ActivateRequest, DomainStatus, PredictResponse
from device_agent.api.views import domain_status
from device_agent.errors import Conflict, InvalidInput, PayloadTooLarge, WorkerUnavailable
from device_agent.store import atomic
from device_agent.store.db import check_domain_name
from device_agent.store.locks import domain_lock

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
    with domain_lock(domain):  # not while an upload or import moves files into the domain
        state.store.delete_domain(domain)
        for directory in (state.paths.datasets(domain), state.paths.domain(domain)):
            shutil.rmtree(directory, ignore_errors=True)
    try:  # the worker drops the domain's adapter from its cache; a fresh worker has none
        state.supervisor.request("forget", domain=domain, timeout=10)
    except WorkerUnavailable:
        pass


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
    images = _read_images(file, state.settings.max_predict_mb << 20, state.settings.max_pixels)
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
    files = _unpack_adapter(file, state.settings.max_upload_mb << 20)
    # Every field and the weights' header are checked here, torch-free, before any value
    # of them can size an allocation in the worker; the worker then loads it for real.
    config = artifacts.parse_config(files[artifacts.CONFIG_NAME])
    artifacts.check_weights(files[artifacts.WEIGHTS_NAME], config)
    summary = dict(config["metrics"], method=config["method"],
                   backbone=config["backbone"]["name"], classes=config["class_names"])
    target = state.paths.adapter(domain, "import-" + uuid.uuid4().hex[:12])
    # Under the domain's lock from the first file to the record: a DELETE meanwhile waits
    # instead of removing files the worker is about to load. All or nothing: the domain is
    # created only together with its version, and the files go on any failure.
    with domain_lock(domain):
        try:
            os.makedirs(target)
            for name, blob in files.items():
                atomic.write_bytes(os.path.join(target, name), blob)
            state.supervisor.request("load", domain=domain, adapter_dir=target)
            state.store.import_adapter(domain, target, summary)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return domain_status(state.store, domain)


def _read_images(uploads: List[UploadFile], budget: int, max_pixels: int) -> List[bytes]:
    """Each image's bytes, read within one budget for all of them (never more than the
    budget plus one byte is held), and each image's declared size checked from its header
    before anything decodes it (the worker checks again)."""
    images, left = [], budget
    for index, upload in enumerate(uploads):
        blob = upload.file.read(left + 1)
        left -= len(blob)
        if left < 0:
            raise PayloadTooLarge("the images are over the %d-byte predict limit" % budget)
        bounds.check_image_header(blob, max_pixels, "image %d" % index)
        images.append(blob)
    return images


def _unpack_adapter(upload: UploadFile, limit: int) -> Dict[str, bytes]:
    """Exactly the artifact's two files, nothing else, no paths, within the size limit."""
    data = upload.file.read(limit + 1)
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
