"""Training jobs: queue one for a domain's latest dataset, follow it, cancel it."""
from typing import List, Optional

from fastapi import APIRouter, Request

from device_agent.api.schemas import Job, JobCreated, JobRequest
from device_agent.api.views import job_view
from device_agent.errors import Conflict
from device_agent.store.db import check_domain_name

router = APIRouter(tags=["jobs"])


@router.post("/domains/{domain}/jobs", status_code=202, response_model=JobCreated,
             summary="train the domain on its latest dataset (queued behind running jobs)")
def start_job(domain: str, body: JobRequest, request: Request) -> dict:
    state = request.app.state
    store = state.store
    store.get_domain(check_domain_name(domain))
    dataset = store.latest_dataset(domain)
    if dataset is None:
        raise Conflict("domain %r has no dataset; upload one first" % domain)
    params = {k: v for k, v in body.model_dump().items() if v is not None}
    if "memory_limit_mb" not in params and state.settings.memory_limit_mb:
        params["memory_limit_mb"] = state.settings.memory_limit_mb
    return {"job_id": store.enqueue_job(domain, dataset["id"], params)["id"]}


@router.get("/jobs", response_model=List[Job], summary="all jobs, oldest first")
def list_jobs(request: Request, domain: Optional[str] = None) -> list:
    return [job_view(job) for job in request.app.state.store.list_jobs(domain)]


@router.get("/jobs/{job_id}", response_model=Job,
            summary="state, progress and ETA, per-epoch metrics, memory, latency")
def get_job(job_id: str, request: Request) -> dict:
    return job_view(request.app.state.store.get_job(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=Job,
             summary="cancel a queued or running job (no effect on a finished one)")
def cancel_job(job_id: str, request: Request) -> dict:
    return job_view(request.app.state.runner.cancel(job_id))
