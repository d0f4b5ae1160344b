"""The FastAPI application: ``create_app(settings)``. Never imports torch.

Data flows one way: HTTP -> routers -> store / job queue -> worker (training) -> adapter
files -> store -> routers. Every /v1 route needs ``Authorization: Bearer <token>``; errors
are RFC 7807 problem+json bodies carrying the agent's stable error code.
"""
import logging
import os
import re
import sqlite3
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from device_agent import __version__
from device_agent.api.auth import TokenGate, load_token, require_token
from device_agent.api.docs import SecurityHeaders, add_docs
from device_agent.api.limits import BodyLimit, is_upload
from device_agent.api.metrics import Metrics
from device_agent.api.problems import problem
from device_agent.api.readiness import StoreCheck
from device_agent.api.review_keeper import ReviewCaps, ReviewKeeper
from device_agent.api.routers import dashboard, datasets, domains, export, jobs, system, telemetry
from device_agent.api.routers import review as review_routes  # issue 14
from device_agent.api.routers.capture import router as capture_router  # capture (issue 14)
from device_agent.api.routers.samples import router as samples_router  # issue 14's data loop
from device_agent.api.schemas import ERROR_RESPONSES
from device_agent.api.settings import Settings
from device_agent.api.timing import RequestTiming
from device_agent.capture.sessions import Captures, sample_writer
from device_agent.cpu_budget import THREADS_ENV
from device_agent.daemon.runner import JobRunner
from device_agent.daemon.supervisor import WorkerSupervisor
from device_agent.errors import AgentError
from device_agent.store.db import Store
from device_agent.store.files import DomainFiles
from device_agent.store.layout import DataPaths
from device_agent.telemetry.sampler import Sampler
from device_agent.telemetry.sources import open_source

log = logging.getLogger("device_agent.api")
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type"}
# An absolute path of two or more parts (a file in an error message): only its last part is
# shown, so error bodies do not tell a caller where the data dir or the code lives. Kept
# whole (capture, issue 14): a camera's /dev/videoN and a URL's "//host/path", which say
# which camera, not where anything is.
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?<!:)(?<!:/)/(?!v1/|dev/video)"
                           r"(?:[^\s/'\":]+/)+([^\s/'\":]+)")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORM_OVERHEAD = 1 << 16  # multipart headers around an upload of max_upload_mb


def worker_command(settings: Settings):
    command = [settings.worker_python, "-m", "device_agent.worker",
               "--device", settings.worker_device]
    if settings.worker_weights:
        command += ["--weights", settings.worker_weights]
    return command


def create_app(settings: Settings) -> FastAPI:
    paths = DataPaths(settings.data_dir)
    paths.make_private()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = _open_store(paths, settings.store_busy_timeout_s)
        store.sample_limits = datasets.archive_limits(settings)  # every add_samples caller
        runner = JobRunner(store, paths, stuck_after_s=settings.stuck_after_s)
        runner.recover()  # jobs a crash left running: promoted, or resumed from checkpoints
        if settings.demo:
            from device_agent.api.demo import seed_demo_domain

            seed_demo_domain(store, paths)
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        if settings.threads:  # else the worker sizes its threads to its own CPU budget
            env[THREADS_ENV] = str(settings.threads)
        env["DEVICE_AGENT_PREDICT_BACKEND"] = settings.predict_backend  # worker/backends.py
        supervisor = WorkerSupervisor(worker_command(settings), runner.on_event,
                                      runner.on_worker_exit, env=env,
                                      stuck_after_s=settings.stuck_after_s)
        runner.attach(supervisor)
        sampler = _sampler(settings, store, runner, supervisor)
        metrics = Metrics(sampler, store)
        runner.listeners.append(metrics.observe_event)
        # what the routers use, each through its dependency in device_agent.api.deps
        app.state.store, app.state.runner, app.state.supervisor = store, runner, supervisor
        app.state.sampler, app.state.metrics = sampler, metrics
        app.state.domain_files = DomainFiles(store, paths)
        app.state.store_check = StoreCheck(store, paths.root)
        # the threads /healthz watches: dead or stuck, the orchestrator restarts the daemon
        app.state.heartbeats = [supervisor.heartbeat, runner.heartbeat, sampler.heartbeat]
        # the review queue of doubtful predictions (issue 14)
        app.state.review_keeper = ReviewKeeper(store, paths, ReviewCaps(
            settings.review_max_items, settings.review_max_mb << 20))
        app.state.review_keeper.start()
        # capture (issue 14): sessions stop with the daemon (their stored frames stay)
        os.makedirs(paths.videos, mode=0o700, exist_ok=True)
        app.state.captures = Captures(sample_writer(store), paths.videos)
        supervisor.start()
        runner.start()
        sampler.start()
        try:
            yield
        finally:
            app.state.review_keeper.stop()  # review queue (issue 14)
            app.state.captures.stop_all()
            sampler.stop()
            runner.stop()
            supervisor.stop()
            store.close()

    app = FastAPI(title="device-agent", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # add_docs: served offline, not from a CDN
                  description="On-device DA2 adapter training for Jetson boards. Every /v1 "
                              "route needs `Authorization: Bearer <token>`.")
    app.state.settings, app.state.paths = settings, paths
    app.state.token = load_token(settings.token, paths.token)
    app.add_middleware(BodyLimit, spool_dir=paths.spool, limit_bytes=lambda scope: (
        (settings.max_upload_mb << 20) + FORM_OVERHEAD if is_upload(scope)
        else settings.max_json_kb << 10))
    # outside the body limit: a request without the token is refused from its head alone
    app.add_middleware(TokenGate, token=lambda: app.state.token, guarded=lambda path: (
        path == "/v1" or path.startswith("/v1/")
        or (path == "/metrics" and settings.metrics_require_token)))
    app.add_middleware(RequestTiming, histogram_for=lambda scope: getattr(
        getattr(app.state, "metrics", None), "http", None))
    app.add_middleware(SecurityHeaders)  # outermost: every answer, early refusals included

    @app.exception_handler(AgentError)
    async def agent_error(request: Request, exc: AgentError) -> JSONResponse:
        return problem(exc.http_status, exc.code, hide_paths(exc.message))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (no such route, wrong method, a malformed form)."""
        answer = problem(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"),
                         hide_paths(str(exc.detail)))
        for name, value in (getattr(exc, "headers", None) or {}).items():
            answer.headers[name] = value  # e.g. Allow on a 405
        return answer

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(500, "internal_error", "the request failed (%s); the daemon's log "
                                              "has the details" % type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return problem(422, "invalid_request", errors)

    add_docs(app)
    app.include_router(system.router)
    app.include_router(dashboard.router)
    for router in (datasets.router, jobs.router, domains.router, telemetry.router, export.router):
        app.include_router(router, prefix="/v1", dependencies=[Depends(require_token)],
                           responses=ERROR_RESPONSES)
    # the data loop (issue 14): samples and the working set
    app.include_router(samples_router, prefix="/v1", dependencies=[Depends(require_token)],
                       responses=ERROR_RESPONSES)
    # the review queue of doubtful predictions and its page (issue 14)
    app.include_router(review_routes.router, prefix="/v1", dependencies=[Depends(require_token)],
                       responses=ERROR_RESPONSES)
    app.include_router(review_routes.page_router)
    # capture (issue 14)
    app.include_router(capture_router, prefix="/v1", dependencies=[Depends(require_token)],
                       responses=ERROR_RESPONSES)
    app.include_router(telemetry.metrics_router, dependencies=[Depends(require_token)]
                       if settings.metrics_require_token else [], responses=ERROR_RESPONSES)
    return app


def hide_paths(message: str) -> str:
    return ABSOLUTE_PATH.sub(r"\1", message)


def _open_store(paths: DataPaths, busy_timeout_s: float) -> Store:
    """Open the store, saying clearly when the database is damaged: a database that opens but
    fails its check starts the daemon (``/readyz`` answers 503 with the reason), one that
    cannot be opened at all stops it with that reason rather than a bare traceback."""
    try:
        store = Store(paths.database, busy_timeout_s)
    except sqlite3.DatabaseError as exc:
        log.critical("the database %s cannot be opened (%s): it is damaged; move it aside "
                     "(or restore a backup) and start again", paths.database, exc)
        raise SystemExit("device-agent: %s is damaged: %s" % (paths.database, exc)) from exc
    paths.make_private()
    try:
        verdict = store.integrity_check()
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        log.critical("the database %s fails its integrity check (%s): the daemon will not be "
                     "ready; move it aside or restore a backup", paths.database, verdict)
    return store


def _sampler(settings: Settings, store: Store, runner: JobRunner,
             supervisor: WorkerSupervisor) -> Sampler:
    source = open_source(settings.telemetry_source, settings.telemetry_interval_s,
                         settings.telemetry_replay)

    def worker() -> dict:
        job_id = runner.current
        figures = {"pid": supervisor.pid, "job_id": job_id}
        if job_id is not None:
            progress = store.get_job(job_id)["progress"]
            figures["saved_activation_mb"] = progress.get("saved_activation_mb")
        device = (supervisor.hello or {}).get("device", "")
        if str(device).startswith("cuda") and supervisor.ready:
            figures.update(supervisor.request("status", timeout=2).get("cuda") or {})
        return figures

    return Sampler(source, store, worker, lambda: runner.current,
                   buffer_size=settings.telemetry_buffer,
                   history_step_s=settings.telemetry_history_step_s,
                   retention_s=settings.telemetry_retention_days * 86400,
                   stuck_after_s=settings.stuck_after_s)
