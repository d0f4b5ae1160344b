"""Liveness and readiness (no token: probes and load balancers call them).

Both are ``async`` and cheap: they run on the event loop, never in the thread pool that
blocking routes (a predict waiting on the worker) can fill, so a probe is answered while
the daemon is busy. ``/healthz`` fails (503) when a daemon thread is dead or stuck, so the
orchestrator restarts what cannot heal; ``/readyz`` checks the store in a thread of its own,
with a deadline (:mod:`device_agent.api.readiness`), so a locked or damaged database answers
503 rather than hanging or 500.
"""
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from device_agent import __version__
from device_agent.api.deps import HeartbeatsDep, StoreCheckDep, SupervisorDep
from device_agent.api.problems import problem
from device_agent.api.schemas import ERROR_RESPONSES, Health
from device_agent.daemon.heartbeat import problems

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, summary="liveness (no token); 503 when a "
            "daemon thread is dead or stuck", responses={503: ERROR_RESPONSES[503]})
async def healthz(heartbeats: HeartbeatsDep, supervisor: SupervisorDep):
    dead_or_stuck = problems(heartbeats)
    if dead_or_stuck:
        return problem(503, "unhealthy", "; ".join(dead_or_stuck))
    return {"status": "ok", "version": __version__, "worker": supervisor.health()}


@router.get("/readyz", summary="ready: worker up and store writable (503 otherwise)",
            responses={503: ERROR_RESPONSES[503]})
async def readyz(supervisor: SupervisorDep, store_check: StoreCheckDep) -> JSONResponse:
    reasons = []
    if not supervisor.ready:
        reasons.append("worker is %s" % supervisor.state)
    store_problem = await store_check.problem()
    if store_problem:
        reasons.append(store_problem)
    if reasons:
        return problem(503, "not_ready", "; ".join(reasons))
    return JSONResponse({"status": "ready"})
