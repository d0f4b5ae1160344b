"""Domains: status, deletion, rollback, predictions, adapter export and import."""
from typing import List

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import Response

from device_agent import bounds
from device_agent.api.deps import (
    CapturesDep,
    DomainFilesDep,
    DomainName,
    ReviewKeeperDep,
    SettingsDep,
    StoreDep,
    SupervisorDep,
)
from device_agent.api.review_keeper import REVIEW_TOP
from device_agent.api.schemas import ActivateRequest, DomainStatus, PredictResponse
from device_agent.api.views import domain_status
from device_agent.errors import Conflict, InvalidInput, WorkerUnavailable

router = APIRouter(tags=["domains"])


@router.get("/domains", response_model=List[DomainStatus])
def list_domains(store: StoreDep) -> list:
    return [domain_status(store, d["name"]) for d in store.list_domains()]


@router.get("/domains/{domain}", response_model=DomainStatus)
def get_domain(domain: DomainName, store: StoreDep) -> dict:
    return domain_status(store, domain)


@router.delete("/domains/{domain}", status_code=204,
               summary="delete the domain, its datasets, jobs and adapter versions")
def delete_domain(domain: DomainName, domain_files: DomainFilesDep,
                  supervisor: SupervisorDep, captures: CapturesDep) -> None:
    captures.forget(domain)  # capture (issue 14): its next frame would create the domain again
    domain_files.delete_domain(domain)
    try:  # the worker drops the domain's adapter from its cache; a fresh worker has none
        supervisor.request("forget", domain=domain, timeout=10)
    except WorkerUnavailable:
        pass


@router.post("/domains/{domain}/activate", response_model=DomainStatus,
             summary="roll the domain back or forward to a kept adapter version")
def activate(domain: DomainName, body: ActivateRequest, store: StoreDep) -> dict:
    store.activate_version(domain, body.version)
    return domain_status(store, domain)


@router.post("/domains/{domain}/predict", response_model=PredictResponse, tags=["predict"],
             summary="classify one or more images with the domain's active adapter")
def predict(domain: DomainName, store: StoreDep, settings: SettingsDep,
            supervisor: SupervisorDep, review_keeper: ReviewKeeperDep,
            file: List[UploadFile] = File(
                ..., description="one or more images (any Pillow still-image format)"),
            top_k: int = 3) -> dict:
    adapter = store.active_adapter(domain)
    if adapter is None:
        raise Conflict("domain %r has no trained adapter yet" % domain)
    if len(file) > settings.max_predict_images or not 1 <= top_k <= 100:
        raise InvalidInput("at most %d images and 1 <= top_k <= 100"
                           % settings.max_predict_images)
    images = bounds.read_images([upload.file for upload in file],
                                settings.max_predict_mb << 20, settings.max_pixels)
    # at least the top-3 the review queue keeps of a doubtful image; the answer has top_k
    result = supervisor.request("predict", b"".join(images), domain=domain,
                                adapter_dir=adapter["path"], top_k=max(top_k, REVIEW_TOP),
                                parts=[len(i) for i in images])
    review_keeper.offer(domain, adapter["version"], images, result["predictions"])
    result["predictions"] = [top[:top_k] for top in result["predictions"]]
    return dict(result, domain=domain, version=adapter["version"])


@router.get("/domains/{domain}/adapter", tags=["adapters"], response_class=Response,
            responses={200: {"content": {"application/zip": {}}}},
            summary="download the active adapter (config + safetensors, one zip)")
def download_adapter(domain: DomainName, store: StoreDep,
                     domain_files: DomainFilesDep) -> Response:
    adapter = store.active_adapter(domain)
    if adapter is None:
        raise Conflict("domain %r has no adapter yet" % domain)
    filename = "%s-v%d.zip" % (domain, adapter["version"])
    return Response(domain_files.adapter_archive(adapter), media_type="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="%s"' % filename})


@router.put("/domains/{domain}/adapter", status_code=201, response_model=DomainStatus,
            tags=["adapters"],
            summary="import an adapter zip; the worker validates it against the backbone")
def import_adapter(domain: DomainName, store: StoreDep, settings: SettingsDep,
                   domain_files: DomainFilesDep, supervisor: SupervisorDep,
                   file: UploadFile = File(..., description="a zip of adapter_config.json "
                                                            "+ adapter_model.safetensors")
                   ) -> dict:
    domain_files.import_adapter(
        domain, file.file, settings.max_upload_mb << 20,
        load=lambda target: supervisor.request("load", domain=domain, adapter_dir=target))
    return domain_status(store, domain)
