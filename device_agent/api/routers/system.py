"""Liveness and readiness (no token: probes and load balancers call them).

Both are ``async`` and cheap: they run on the event loop, never in the thread pool that
blocking routes (a predict waiting on the worker) can fill, so a probe is answered while
the daemon is busy. ``/healthz`` fails (503) when a daemon thread is dead or stuck, so the
orchestrator restarts what cannot heal; ``/readyz`` checks the store in a thread of its own,
with a deadline, so a locked or damaged database answers 503 rather than hanging or 500.
"""
import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from device_agent import __version__
from device_agent.api.problems import problem
from device_agent.api.schemas import ERROR_RESPONSES, Health
from device_agent.daemon.heartbeat import problems

router = APIRouter(tags=["system"])
STORE_CHECK_TIMEOUT_S = 2.0
STORE_CHECK_TTL_S = 30.0  # integrity_check reads the whole database: not on every probe
_store_checks = ThreadPoolExecutor(1, thread_name_prefix="readyz-store")


@router.get("/healthz", response_model=Health, summary="liveness (no token); 503 when a "
            "daemon thread is dead or stuck", responses={503: ERROR_RESPONSES[503]})
async def healthz(request: Request):
    state = request.app.state
    dead_or_stuck = problems(getattr(state, "heartbeats", []))
    if dead_or_stuck:
        return problem(503, "unhealthy", "; ".join(dead_or_stuck))
    return {"status": "ok", "version": __version__, "worker": state.supervisor.health()}


@router.get("/readyz", summary="ready: worker up and store writable (503 otherwise)",
            responses={503: ERROR_RESPONSES[503]})
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    reasons = []
    if not state.supervisor.ready:
        reasons.append("worker is %s" % state.supervisor.state)
    store_problem = await _store_problem(state)
    if store_problem:
        reasons.append(store_problem)
    if reasons:
        return problem(503, "not_ready", "; ".join(reasons))
    return JSONResponse({"status": "ready"})


async def _store_problem(state) -> str:
    if not os.access(state.paths.root, os.W_OK):
        return "the data dir is not writable"
    checked_at, verdict = getattr(state, "store_check", (float("-inf"), ""))
    if time.monotonic() - checked_at > STORE_CHECK_TTL_S:
        loop = asyncio.get_event_loop()
        try:
            verdict = await asyncio.wait_for(loop.run_in_executor(
                _store_checks, _integrity, state.store), STORE_CHECK_TIMEOUT_S)
        except asyncio.TimeoutError:
            return "the store is busy (locked by another writer?)"
        state.store_check = (time.monotonic(), verdict)
    return "" if verdict == "ok" else "the store is not intact: %s" % verdict


def _integrity(store) -> str:
    try:
        return store.integrity_check()
    except sqlite3.DatabaseError as exc:  # "database disk image is malformed"
        return str(exc)
