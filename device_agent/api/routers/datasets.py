"""Dataset uploads: an ImageFolder archive, unpacked safely into the data dir."""
from fastapi import APIRouter, File, UploadFile

from device_agent.api.deps import DomainFilesDep, DomainName, SettingsDep
from device_agent.api.schemas import DatasetSummary
from device_agent.store import datasets

router = APIRouter(tags=["datasets"])


@router.post("/domains/{domain}/datasets", status_code=201, response_model=DatasetSummary,
             summary="upload an ImageFolder archive (.zip, .tar, .tar.gz)")
def upload_dataset(domain: DomainName, settings: SettingsDep, domain_files: DomainFilesDep,
                   file: UploadFile = File(
                       ..., description="train/<class>/* (+ val/<class>/*) or <class>/*")
                   ) -> dict:
    limits = datasets.Limits(max_files=settings.max_files,
                             max_extracted_bytes=settings.max_extracted_mb << 20,
                             max_pixels=settings.max_pixels)
    return domain_files.add_dataset(domain, file.file, settings.max_upload_mb << 20, limits)
