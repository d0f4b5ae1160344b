"""Telemetry: the latest sample, a downsampled range, a live stream (SSE), and /metrics."""
import asyncio
import json
import logging
import queue
from typing import List, Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from device_agent.api.deps import MetricsDep, SamplerDep
from device_agent.api.schemas import TelemetrySample
from device_agent.errors import Conflict

log = logging.getLogger("device_agent.api")
router = APIRouter(tags=["telemetry"])
metrics_router = APIRouter(tags=["telemetry"])
KEEPALIVE_S = 15.0
POLL_S = 0.1


@router.get("/telemetry", response_model=List[TelemetrySample],
            summary="the latest sample, or with since/until/step a downsampled range")
def telemetry(sampler: SamplerDep,
              since: Optional[float] = Query(None, description="Unix time; from here"),
              until: Optional[float] = Query(None, description="Unix time; up to here"),
              step: float = Query(0.0, ge=0, le=86400,
                                  description="bucket seconds (0: every sample)")) -> list:
    if since is None and until is None:
        latest = sampler.latest()
        if latest is None:
            raise Conflict("no sample yet; the sampler takes one per interval")
        return [latest]
    if since is not None and until is not None and until < since:
        raise Conflict("until is before since")
    return sampler.window(since, until, step)


@router.get("/telemetry/stream", summary="Server-Sent Events: one `sample` event per sample",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def telemetry_stream(request: Request, sampler: SamplerDep,
                           limit: int = Query(0, ge=0, le=1000000,
                                              description="stop after this many (0: never)")):
    subscriber = sampler.subscribe()

    async def events():
        sent = 0
        try:
            latest = sampler.latest()
            if latest is not None:
                yield _event(latest)
                sent += 1
            quiet = 0.0
            while not limit or sent < limit:
                if await request.is_disconnected():
                    break
                try:
                    sample = subscriber.get_nowait()
                except queue.Empty:  # wait on the event loop: no thread held per client
                    await asyncio.sleep(POLL_S)
                    quiet += POLL_S
                    if quiet >= KEEPALIVE_S:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
                    continue
                quiet = 0.0
                try:
                    event = _event(sample)
                except (TypeError, ValueError) as exc:  # one bad sample, not the stream
                    log.warning("telemetry sample not streamed: %s", exc)
                    continue
                yield event
                sent += 1
        finally:
            sampler.unsubscribe(subscriber)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})


def _event(sample) -> str:
    return "event: sample\ndata: %s\n\n" % json.dumps(sample)


@metrics_router.get("/metrics", response_class=Response,
                    summary="Prometheus text format (token required unless configured off)")
def metrics(daemon_metrics: MetricsDep) -> Response:
    return Response(generate_latest(daemon_metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
