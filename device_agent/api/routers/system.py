"""Liveness and readiness (no token: probes and load balancers call them)."""
import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from device_agent import __version__
from device_agent.api.problems import problem
from device_agent.api.schemas import ERROR_RESPONSES, Health

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, summary="liveness (no token)")
def healthz(request: Request) -> dict:
    return {"status": "ok", "version": __version__,
            "worker": request.app.state.supervisor.health()}


@router.get("/readyz", summary="ready: worker up and store writable (503 otherwise)",
            responses={503: ERROR_RESPONSES[503]})
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    problems = []
    if not state.supervisor.ready:
        problems.append("worker is %s" % state.supervisor.state)
    if not os.access(state.paths.root, os.W_OK) or state.store.integrity_check() != "ok":
        problems.append("store is not writable or not intact")
    if problems:
        return problem(503, "not_ready", "; ".join(problems))
    return JSONResponse({"status": "ready"})
