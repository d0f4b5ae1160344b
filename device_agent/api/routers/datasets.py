"""Dataset uploads: an ImageFolder archive, unpacked safely into the data dir and merged into
the domain's working set."""
from fastapi import APIRouter, File, Query, UploadFile

from device_agent.api.deps import DomainFilesDep, DomainName, SettingsDep
from device_agent.api.schemas import DatasetSummary
from device_agent.api.settings import Settings
from device_agent.store import datasets

router = APIRouter(tags=["datasets"])
RELABEL = Query(False, description="an image already in the working set under another "
                                   "label takes the new one (it keeps its split); without "
                                   "this, such an upload is refused with 409, nothing stored")


def archive_limits(settings: Settings) -> datasets.Limits:
    """The decode limits of an archive upload -- also those of every sample added."""
    return datasets.Limits(max_files=settings.max_files,
                           max_extracted_bytes=settings.max_extracted_mb << 20,
                           max_pixels=settings.max_pixels)


@router.post("/domains/{domain}/datasets", status_code=201, response_model=DatasetSummary,
             summary="upload an ImageFolder archive (.zip, .tar, .tar.gz); its images join "
                     "the working set (an explicit val/ keeps its split)")
def upload_dataset(domain: DomainName, settings: SettingsDep, domain_files: DomainFilesDep,
                   file: UploadFile = File(
                       ..., description="train/<class>/* (+ val/<class>/*) or <class>/*"),
                   relabel: bool = RELABEL) -> dict:
    return domain_files.add_dataset(domain, file.file, settings.max_upload_mb << 20,
                                    archive_limits(settings), relabel)
