"""The FastAPI application: ``create_app(settings)``. Never imports torch.

Data flows one way: HTTP -> routers -> store / job queue -> worker (training) -> adapter
files -> store -> routers. Every /v1 route needs ``Authorization: Bearer <token>``; errors
are RFC 7807 problem+json bodies carrying the agent's stable error code.
"""
import os
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from device_agent import __version__
from device_agent.api.auth import load_token, require_token
from device_agent.api.docs import SecurityHeaders, add_docs
from device_agent.api.limits import BodyLimit
from device_agent.api.metrics import Metrics
from device_agent.api.problems import problem
from device_agent.api.routers import dashboard, datasets, domains, jobs, system, telemetry
from device_agent.api.schemas import ERROR_RESPONSES
from device_agent.api.settings import Settings
from device_agent.api.timing import RequestTiming
from device_agent.cpu_budget import THREADS_ENV
from device_agent.daemon.runner import JobRunner
from device_agent.daemon.supervisor import WorkerSupervisor
from device_agent.errors import AgentError
from device_agent.store.db import Store
from device_agent.store.layout import DataPaths
from device_agent.telemetry.sampler import Sampler
from device_agent.telemetry.sources import open_source

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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = Store(paths.database)
        runner = JobRunner(store, paths)
        runner.recover()  # jobs a crash left running: promoted, or resumed from checkpoints
        if settings.demo:
            from device_agent.api.demo import seed_demo_domain

            seed_demo_domain(store, paths)
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        if settings.threads:  # else the worker sizes its threads to its own CPU budget
            env[THREADS_ENV] = str(settings.threads)
        supervisor = WorkerSupervisor(worker_command(settings), runner.on_event,
                                      runner.on_worker_exit, env=env)
        runner.attach(supervisor)
        sampler = _sampler(settings, store, runner, supervisor)
        metrics = Metrics(sampler, store)
        runner.listeners.append(metrics.observe_event)
        app.state.store, app.state.runner, app.state.supervisor = store, runner, supervisor
        app.state.sampler, app.state.metrics = sampler, metrics
        supervisor.start()
        runner.start()
        sampler.start()
        try:
            yield
        finally:
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
    app.add_middleware(BodyLimit, limit_bytes=lambda: (settings.max_upload_mb << 20)
                       + FORM_OVERHEAD)
    app.add_middleware(RequestTiming, histogram_for=lambda scope: getattr(
        getattr(app.state, "metrics", None), "http", None))
    app.add_middleware(SecurityHeaders)  # outermost: every answer, early refusals included

    @app.exception_handler(AgentError)
    async def agent_error(request: Request, exc: AgentError) -> JSONResponse:
        return problem(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return problem(422, "invalid_request", errors)

    add_docs(app)
    app.include_router(system.router)
    app.include_router(dashboard.router)
    for router in (datasets.router, jobs.router, domains.router, telemetry.router):
        app.include_router(router, prefix="/v1", dependencies=[Depends(require_token)],
                           responses=ERROR_RESPONSES)
    app.include_router(telemetry.metrics_router, dependencies=[Depends(require_token)]
                       if settings.metrics_require_token else [], responses=ERROR_RESPONSES)
    return app


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
                   retention_s=settings.telemetry_retention_days * 86400)
