"""Capture from a camera or a video into a domain's samples, headless: start, watch, stop,
and a preview frame to aim the camera by from a phone or laptop browser.

Everything the caller sends is checked before anything is opened: the label by the
ImageFolder class-name rules, the source by the allowlist of device_agent.capture.sources,
count and interval by their bounds. Then OpenCV must be importable (501 otherwise).
"""
from typing import Optional

from fastapi import APIRouter, Query, Response

from device_agent.api.deps import CapturesDep, DomainName, StoreDep
from device_agent.api.schemas import CaptureProgress, CaptureStart, Problem
from device_agent.capture import frames, sessions
from device_agent.capture.sources import MAX_SOURCE_CHARS, check_present, parse_source
from device_agent.imagefolder import check_label

router = APIRouter(tags=["capture"])
NOT_INSTALLED = {501: {"model": Problem, "content": {"application/problem+json": {}},
                       "description": "OpenCV (or, for csi://, its GStreamer support) is "
                                      "not installed"}}


@router.post("/domains/{domain}/capture", status_code=202, response_model=CaptureProgress,
             responses=NOT_INSTALLED,
             summary="start capturing frames of a camera or video as samples")
def start_capture(domain: DomainName, body: CaptureStart, store: StoreDep,
                  captures: CapturesDep) -> dict:
    label = check_label(body.label)
    source = parse_source(body.source, captures.videos_dir)
    sessions.check_request(body.count, body.interval)
    check_present(source)
    frames.load_cv2()
    request = sessions.CaptureRequest(source, label, body.count, body.interval)
    session = captures.start(domain, request, sessions.working_size(store, domain))
    return session.progress()._asdict()


@router.get("/domains/{domain}/capture", response_model=CaptureProgress,
            summary="the domain's capture: running, or the last one")
def capture_progress(domain: DomainName, captures: CapturesDep) -> dict:
    return captures.get(domain).progress()._asdict()


@router.delete("/domains/{domain}/capture", response_model=CaptureProgress,
               summary="stop the domain's capture (the frames stored so far stay)")
def stop_capture(domain: DomainName, captures: CapturesDep) -> dict:
    return captures.stop(domain).progress()._asdict()


@router.get("/domains/{domain}/capture/preview", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, **NOT_INSTALLED},
            summary="a frame to aim the camera by (JPEG, at the stored size)")
def capture_preview(domain: DomainName, store: StoreDep, captures: CapturesDep,
                    source: Optional[str] = Query(
                        None, max_length=MAX_SOURCE_CHARS,
                        description="when the domain is not capturing: a source (the same "
                                    "allowlist as a capture) opened for one frame")
                    ) -> Response:
    wanted = None if source is None else parse_source(source, captures.videos_dir)
    if wanted is not None:
        check_present(wanted)
    frames.load_cv2()
    jpeg = captures.preview(domain, wanted, sessions.working_size(store, domain))
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
