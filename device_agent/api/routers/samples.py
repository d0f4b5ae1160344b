"""The data loop (issue 14): labelled images added to a domain's working set a few at a time,
and what that working set holds."""
from typing import List

from fastapi import APIRouter, File, Form, UploadFile

from device_agent import bounds
from device_agent.api.deps import DomainName, SettingsDep, StoreDep
from device_agent.api.routers.datasets import RELABEL, archive_limits
from device_agent.api.schemas import DatasetStats, SamplesAdded
from device_agent.errors import InvalidInput
from device_agent.store.dataset_stats import dataset_stats
from device_agent.store.samples import NewSample

router = APIRouter(tags=["datasets"])


@router.post("/domains/{domain}/samples", status_code=201, response_model=SamplesAdded,
             summary="add labelled images to the domain's working set (creating the domain)",
             description="Multipart: one or more `file` parts (still images Pillow reads) and "
                         "`label`: ONE label for all the files, or one per file in the same "
                         "order. The archive upload's limits apply (files, bytes, pixels); a "
                         "bad label, a non-image or an image over the pixel limit refuses the "
                         "whole request, nothing stored. Each new image goes to train or val "
                         "by a rule of its content hash and never moves; the same bytes again "
                         "are a duplicate (stored once).")
def add_samples(domain: DomainName, store: StoreDep, settings: SettingsDep,
                file: List[UploadFile] = File(..., description="the images"),
                label: List[str] = Form(..., description="one label, or one per file"),
                relabel: bool = RELABEL) -> dict:
    limits = archive_limits(settings)
    if len(file) > limits.max_files:
        raise InvalidInput("%d files; the limit is %d" % (len(file), limits.max_files))
    if len(label) not in (1, len(file)):
        raise InvalidInput("%d labels for %d files: give one label, or one per file"
                           % (len(label), len(file)))
    labels = label * len(file) if len(label) == 1 else label
    images = bounds.read_images([upload.file for upload in file],
                                settings.max_upload_mb << 20, limits.max_pixels)
    added = store.add_samples(domain, [NewSample(name, blob) for name, blob in
                                       zip(labels, images)], relabel, limits)
    placed = store.splits_of(domain, added.ids)
    return dict(added._asdict(), domain=domain, splits=[placed[h] for h in added.ids])


@router.get("/domains/{domain}/dataset", response_model=DatasetStats,
            summary="the working set: counts per class and split, its snapshot id, warnings")
def get_dataset(domain: DomainName, store: StoreDep, settings: SettingsDep) -> dict:
    store.get_domain(domain)  # 404 for a domain that does not exist
    return dataset_stats(domain, store.working_set(domain), settings.min_images_per_class)
