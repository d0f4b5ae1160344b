"""What the routers need of the running daemon, as FastAPI dependencies (the "bigger
applications" layout: https://fastapi.tiangolo.com/tutorial/bigger-applications/).

A route names what it uses in its signature (``store: StoreDep``); this module is the one
place that knows those objects live on ``app.state`` (put there by ``create_app`` and its
lifespan). ``DomainName`` is a domain path parameter checked against the store's naming
rule before the route runs: a bad name is the same 400 ``invalid_input`` problem+json the
store gives, not a validation 422.

Each dependency is ``async``: FastAPI runs a plain ``def`` dependency in its thread pool,
and /healthz and /readyz must be answered on the event loop even when blocking routes (a
predict waiting on the worker) hold every thread of that pool.
"""
from typing import Any, Awaitable, Callable, List

from fastapi import Depends, Path, Request
from typing_extensions import Annotated  # typing's is 3.9+; pydantic 2 requires this package

from device_agent.api.metrics import Metrics
from device_agent.api.readiness import StoreCheck
from device_agent.api.review_keeper import ReviewKeeper
from device_agent.api.settings import Settings
from device_agent.capture.sessions import Captures
from device_agent.daemon.heartbeat import Heartbeat
from device_agent.daemon.runner import JobRunner
from device_agent.daemon.supervisor import WorkerSupervisor
from device_agent.store.db import Store, check_domain_name
from device_agent.store.files import DomainFiles
from device_agent.telemetry.sampler import Sampler


def _from_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """The dependency that hands a route ``app.state.<name>``."""
    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    dependency.__name__ = "get_" + name
    return dependency


async def get_heartbeats(request: Request) -> List[Heartbeat]:
    """The daemon threads /healthz watches (none before the lifespan has started them)."""
    return getattr(request.app.state, "heartbeats", [])


async def valid_domain(domain: Annotated[str, Path(
        description="1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or "
                    "digit")]) -> str:
    return check_domain_name(domain)


SettingsDep = Annotated[Settings, Depends(_from_state("settings"))]
StoreDep = Annotated[Store, Depends(_from_state("store"))]
DomainFilesDep = Annotated[DomainFiles, Depends(_from_state("domain_files"))]
StoreCheckDep = Annotated[StoreCheck, Depends(_from_state("store_check"))]
RunnerDep = Annotated[JobRunner, Depends(_from_state("runner"))]
SupervisorDep = Annotated[WorkerSupervisor, Depends(_from_state("supervisor"))]
SamplerDep = Annotated[Sampler, Depends(_from_state("sampler"))]
MetricsDep = Annotated[Metrics, Depends(_from_state("metrics"))]
HeartbeatsDep = Annotated[List[Heartbeat], Depends(get_heartbeats)]
DomainName = Annotated[str, Depends(valid_domain)]
# the review queue of doubtful predictions (issue 14)
ReviewKeeperDep = Annotated[ReviewKeeper, Depends(_from_state("review_keeper"))]
# capture (issue 14)
CapturesDep = Annotated[Captures, Depends(_from_state("captures"))]
