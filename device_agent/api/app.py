"""The FastAPI application: ``create_app(settings)``. Never imports torch.

Data flows one way: HTTP -> this module -> store / job queue -> worker (training) ->
adapter files -> store -> here. Every /v1 route needs ``Authorization: Bearer <token>``;
errors are RFC 7807 problem+json bodies carrying the agent's stable error code.
"""
import hmac
import io
import os
import secrets
import shutil
import tempfile
import uuid
import zipfile
from contextlib import asynccontextmanager
from typing import Dict, List, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, File, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from device_agent import __version__, artifacts
from device_agent.api.settings import Settings
from device_agent.daemon.runner import DataPaths, JobRunner
from device_agent.daemon.supervisor import WorkerSupervisor
from device_agent.errors import AgentError, Conflict, InvalidInput, PayloadTooLarge, Unauthorized
from device_agent.manifest import load_manifest
from device_agent.store import atomic, datasets
from device_agent.store.db import Store, check_domain_name

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHUNK = 1 << 20


class JobRequest(BaseModel):
    """Hyperparameters of one training job; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["da2", "finetune", "last", "bn_last", "tinytl_bias",
                    "tinytl_lite_residual"] = Field("da2", description="what is trained")
    backbone: str = Field("efficientnet_lite0", description="a backbone of models/manifest.json")
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=1024)
    resolution: Optional[int] = Field(None, ge=16, le=1024,
                                      description="input size in pixels; default: the backbone's")
    lr: Optional[float] = Field(None, gt=0, le=1, description="default: the method's")
    seed: int = Field(0, ge=0, le=2 ** 31 - 1)
    micro_batch: int = Field(0, ge=0, le=1024,
                             description="> 0: accumulate gradients over chunks of this size")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in load_manifest():
            raise ValueError("unknown backbone %r" % value)
        return value


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(..., ge=1, description="an adapter version the domain keeps")


def _problem(status: int, code: str, detail: object) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": code.replace("_", " "), "status": status,
                         "code": code, "detail": detail}, status_code=status,
                        media_type="application/problem+json")


def _load_token(settings: Settings, paths: DataPaths) -> str:
    if settings.token:
        return settings.token
    path = os.path.join(paths.root, "token")
    if not os.path.exists(path):
        atomic.write_bytes(path, secrets.token_urlsafe(32).encode(), mode=0o600)
    with open(path) as handle:
        return handle.read().strip()


def require_token(request: Request, authorization: Optional[str] = Header(None)) -> None:
    expected = request.app.state.token.encode()
    given = (authorization or "").encode()
    if not given.startswith(b"Bearer ") or not hmac.compare_digest(given[7:], expected):
        raise Unauthorized("missing or wrong API token (Authorization: Bearer <token>)")


def create_app(settings: Settings) -> FastAPI:
    paths = DataPaths(settings.data_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = Store(paths.database)
        store.requeue_interrupted()  # jobs a crash left running resume from checkpoints
        runner = JobRunner(store, paths)
        command = [settings.worker_python, "-m", "device_agent.worker",
                   "--device", settings.worker_device]
        if settings.worker_weights:
            command += ["--weights", settings.worker_weights]
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        supervisor = WorkerSupervisor(command, runner.on_event, runner.on_worker_exit, env=env)
        runner.attach(supervisor)
        app.state.store, app.state.runner, app.state.supervisor = store, runner, supervisor
        supervisor.start()
        runner.start()
        try:
            yield
        finally:
            runner.stop()
            supervisor.stop()
            store.close()

    app = FastAPI(title="device-agent", version=__version__, lifespan=lifespan,
                  description="On-device DA2 adapter training for Jetson boards.")
    app.state.settings, app.state.paths = settings, paths
    app.state.token = _load_token(settings, paths)

    @app.exception_handler(AgentError)
    async def agent_error(request: Request, exc: AgentError) -> JSONResponse:
        return _problem(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return _problem(422, "invalid_request", errors)

    app.include_router(_system_router())
    app.include_router(_v1_router(), prefix="/v1", dependencies=[Depends(require_token)])
    return app


def _system_router() -> APIRouter:
    router = APIRouter(tags=["system"])

    @router.get("/healthz", summary="liveness (no token)")
    def healthz(request: Request) -> Dict[str, object]:
        return {"status": "ok", "version": __version__,
                "worker": request.app.state.supervisor.health()}

    @router.get("/readyz", summary="ready: worker up and store writable")
    def readyz(request: Request) -> JSONResponse:
        state = request.app.state
        problems = []
        if not state.supervisor.ready:
            problems.append("worker is %s" % state.supervisor.state)
        if not os.access(state.paths.root, os.W_OK) or state.store.integrity_check() != "ok":
            problems.append("store is not writable or not intact")
        if problems:
            return _problem(503, "not_ready", "; ".join(problems))
        return JSONResponse({"status": "ready"})

    return router


def _v1_router() -> APIRouter:
    router = APIRouter()

    @router.post("/domains/{domain}/datasets", status_code=201, tags=["datasets"],
                 summary="upload an ImageFolder archive (.zip, .tar, .tar.gz)")
    def upload_dataset(domain: str, request: Request, file: UploadFile = File(...)) -> Dict:
        check_domain_name(domain)
        state = request.app.state
        settings = state.settings
        limit = settings.max_upload_mb << 20
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit + (1 << 16):
            raise PayloadTooLarge("upload of %d bytes is over the %d MB limit"
                                  % (declared, settings.max_upload_mb))
        uploads = os.path.join(state.paths.root, "uploads")
        os.makedirs(uploads, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=uploads)
        try:
            _copy_limited(file, handle, limit)
            target = os.path.join(state.paths.datasets(domain), uuid.uuid4().hex[:12])
            limits = datasets.Limits(max_files=settings.max_files,
                                     max_extracted_bytes=settings.max_extracted_mb << 20,
                                     max_pixels=settings.max_pixels)
            summary = datasets.ingest(temporary, target, limits)
        finally:
            os.unlink(temporary)
        state.store.ensure_domain(domain)
        dataset_id = state.store.add_dataset(domain, target, summary)
        return dict(summary, dataset_id=dataset_id, domain=domain)

    @router.post("/domains/{domain}/jobs", status_code=202, tags=["jobs"],
                 summary="train the domain on its latest dataset")
    def start_job(domain: str, body: JobRequest, request: Request) -> Dict[str, str]:
        store = request.app.state.store
        store.get_domain(check_domain_name(domain))
        dataset = store.latest_dataset(domain)
        if dataset is None:
            raise Conflict("domain %r has no dataset; upload one first" % domain)
        params = {k: v for k, v in body.model_dump().items() if v is not None}
        return {"job_id": store.enqueue_job(domain, dataset["id"], params)["id"]}

    @router.get("/jobs", tags=["jobs"])
    def list_jobs(request: Request, domain: Optional[str] = None) -> List[Dict]:
        return request.app.state.store.list_jobs(domain)

    @router.get("/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, request: Request) -> Dict:
        return request.app.state.store.get_job(job_id)

    @router.post("/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: str, request: Request) -> Dict:
        return request.app.state.runner.cancel(job_id)

    @router.get("/domains", tags=["domains"])
    def list_domains(request: Request) -> List[Dict]:
        return [_domain_status(request, d["name"]) for d in request.app.state.store.list_domains()]

    @router.get("/domains/{domain}", tags=["domains"])
    def get_domain(domain: str, request: Request) -> Dict:
        return _domain_status(request, domain)

    @router.delete("/domains/{domain}", status_code=204, tags=["domains"])
    def delete_domain(domain: str, request: Request) -> None:
        state = request.app.state
        state.store.delete_domain(domain)
        for directory in (state.paths.datasets(domain),
                          os.path.join(state.paths.root, "domains", domain)):
            shutil.rmtree(directory, ignore_errors=True)

    @router.post("/domains/{domain}/activate", tags=["domains"],
                 summary="roll the domain back or forward to a kept adapter version")
    def activate(domain: str, body: ActivateRequest, request: Request) -> Dict:
        request.app.state.store.activate_version(domain, body.version)
        return _domain_status(request, domain)

    @router.post("/domains/{domain}/predict", tags=["predict"],
                 summary="classify one or more images with the domain's active adapter")
    def predict(domain: str, request: Request, file: List[UploadFile] = File(...),
                top_k: int = 3) -> Dict:
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

    @router.get("/domains/{domain}/adapter", tags=["adapters"],
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

    @router.put("/domains/{domain}/adapter", status_code=201, tags=["adapters"],
                summary="import an adapter zip; the worker validates it against the backbone")
    def import_adapter(domain: str, request: Request, file: UploadFile = File(...)) -> Dict:
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
        summary = dict(loaded["metrics"], method=loaded["method"], backbone=loaded["backbone"])
        state.store.import_adapter(domain, target, summary)
        return _domain_status(request, domain)

    return router


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


def _domain_status(request: Request, domain: str) -> Dict[str, object]:
    store = request.app.state.store
    record = store.get_domain(domain)
    versions = store.versions(domain)
    active = next((v for v in versions if v["version"] == record["active_version"]), None)
    jobs = store.list_jobs(domain)
    summary = active["summary"] if active else {}
    return {"name": domain, "created_at": record["created_at"],
            "active_version": record["active_version"],
            "method": summary.get("method"), "backbone": summary.get("backbone"),
            "val_top1": summary.get("val_top1"), "adapter_bytes": summary.get("adapter_bytes"),
            "trainable_params": summary.get("trainable_params"),
            "trained_at": active["created_at"] if active else None,
            "versions": [{"version": v["version"], "created_at": v["created_at"],
                          "job_id": v["job_id"], "val_top1": v["summary"].get("val_top1")}
                         for v in versions],
            "last_job": jobs[-1] if jobs else None}
