"""Training jobs: queue one for a domain's working set (or an archive it names), follow it,
cancel it."""
from typing import List, Optional

from fastapi import APIRouter, Query

from device_agent.api.deps import DomainName, RunnerDep, SettingsDep, StoreDep
from device_agent.api.schemas import Job, JobCreated, JobRequest
from device_agent.api.views import job_view
from device_agent.errors import Conflict, UnknownName
from device_agent.store.db import Store

router = APIRouter(tags=["jobs"])


@router.post("/domains/{domain}/jobs", status_code=202, response_model=JobCreated,
             summary="train the domain on its working set, or on one archive of its own "
                     "when dataset_id names one (queued behind running jobs)",
             description="The job trains a content-addressed snapshot of the working set "
                         "(or of the archive's images) taken when it STARTS, not when it is "
                         "queued; the job's snapshot_id names it.")
def start_job(domain: DomainName, body: JobRequest, store: StoreDep, settings: SettingsDep,
              dataset_id: Optional[int] = Query(
                  None, ge=1, description="the dataset_id an upload to this domain returned; "
                                          "default: the domain's working set")) -> dict:
    store.get_domain(domain)
    if dataset_id is None:
        if not store.working_set_lines(domain):
            raise Conflict("domain %r has no samples; add some or upload an archive first"
                           % domain)
    else:
        _check_dataset(store, domain, dataset_id)
    params = {k: v for k, v in body.model_dump().items() if v is not None}
    if "memory_limit_mb" not in params and settings.memory_limit_mb:
        params["memory_limit_mb"] = settings.memory_limit_mb
    return {"job_id": store.enqueue_job(domain, dataset_id, params)["id"]}


def _check_dataset(store: Store, domain: str, dataset_id: int) -> None:
    dataset = store.get_dataset(dataset_id)  # 404 when there is none
    if dataset["domain"] != domain:  # another domain's data is not this one's to train on
        raise UnknownName("domain %r has no dataset %d" % (domain, dataset_id))


@router.get("/jobs", response_model=List[Job], summary="all jobs, oldest first")
def list_jobs(store: StoreDep, domain: Optional[str] = None) -> list:
    return [job_view(job) for job in store.list_jobs(domain)]


@router.get("/jobs/{job_id}", response_model=Job,
            summary="state, progress and ETA, per-epoch metrics, memory, latency")
def get_job(job_id: str, store: StoreDep) -> dict:
    return job_view(store.get_job(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=Job,
             summary="cancel a queued or running job (no effect on a finished one)")
def cancel_job(job_id: str, runner: RunnerDep) -> dict:
    return job_view(runner.cancel(job_id))
