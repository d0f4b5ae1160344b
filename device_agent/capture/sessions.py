"""Capture sessions: one background thread per domain grabs ``count`` frames, one every
``interval_s`` seconds, shapes each to the domain's working size and stores it as a sample
(``store.add_samples``), keeping its progress in memory for the API.

A camera is timed by the clock: the thread keeps grabbing (so the frame it takes is the
newest, not one a driver queued seconds ago) and takes one when the interval is up. A video
file is timed by its own frame rate: ``interval_s`` is video time, and the file is read as
fast as it decodes.

A session's thread never dies silently: whatever stops it lands in its ``error`` and the
log. One session per domain runs at a time, at most ``MAX_RUNNING`` in all.
"""
import logging
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional

from device_agent import jobspec
from device_agent.capture import frames
from device_agent.capture.sources import Source
from device_agent.errors import AgentError, Conflict, InvalidInput, UnknownName
from device_agent.manifest import backbone_info
from device_agent.store.samples import AddedSamples, NewSample

log = logging.getLogger("device_agent.capture")

MAX_COUNT = 1000
MAX_INTERVAL_S = 3600.0
MAX_SPAN_S = 6 * 3600.0     # count x interval: a capture is a sitting, not a surveillance feed
OPEN_ALLOWANCE_S = 120.0    # the wall time a session may take beyond count x interval,
FRAME_ALLOWANCE_S = 1.0     # and per frame (a 4K video decoded in software on a busy Nano)
MAX_RUNNING = 4             # sessions at once, all domains together
MAX_KEPT = 64               # finished sessions kept for GET (the oldest go first)
MAX_MISSED_GRABS = 50       # a camera that gives nothing this many times in a row has stopped
MISSED_GRAB_WAIT_S = 0.1
PREVIEW_EVERY_S = 0.5       # a live session refreshes its preview this often between captures
CAPTURE_SOURCE = "capture"  # the samples' source, as the dataset's statistics show it

RUNNING, SUCCEEDED, FAILED, STOPPED = "running", "succeeded", "failed", "stopped"


class CaptureRequest(NamedTuple):
    source: Source
    label: str
    count: int
    interval_s: float


class Progress(NamedTuple):
    """A session as the API shows it (a copy: the thread keeps changing its own)."""

    domain: str
    source: str
    label: str
    count: int
    interval_s: float
    size: int
    state: str
    grabbed: int
    stored: int
    duplicates: int
    failed: int
    error: Optional[str]
    started_at: float
    finished_at: Optional[float]


def check_request(count: int, interval_s: float) -> None:
    """InvalidInput for a count or interval out of bounds (before anything is opened)."""
    if not 1 <= count <= MAX_COUNT:
        raise InvalidInput("count is 1-%d frames" % MAX_COUNT)
    if not 0 <= interval_s <= MAX_INTERVAL_S:
        raise InvalidInput("interval is 0-%g seconds" % MAX_INTERVAL_S)
    if count * interval_s > MAX_SPAN_S:
        raise InvalidInput("count x interval is at most %g seconds (%d h)"
                           % (MAX_SPAN_S, MAX_SPAN_S // 3600))


def working_size(store: Any, domain: str) -> int:
    """The side in pixels captured frames are stored at: the resolution the domain's active
    adapter was trained at, else its backbone's input size, else the job contract's
    default (the default backbone's input size)."""
    try:
        adapter = store.active_adapter(domain)
    except UnknownName:  # no such domain yet: its first samples create it
        adapter = None
    summary = (adapter or {}).get("summary") or {}
    resolution = summary.get("resolution")
    bounds = jobspec.PARAM_BY_NAME["resolution"]
    if isinstance(resolution, int) and bounds.low <= resolution <= bounds.high:
        return resolution
    try:
        return int(backbone_info(str(summary.get("backbone") or jobspec.DEFAULT_BACKBONE))
                   ["input_size"])
    except UnknownName:  # an imported adapter's backbone this manifest no longer has
        return int(backbone_info(jobspec.DEFAULT_BACKBONE)["input_size"])


def sample_writer(store: Any) -> Callable[[str, str, bytes], AddedSamples]:
    """What a session stores a frame with: one capture sample through the store."""
    def store_frame(domain: str, label: str, jpeg: bytes) -> AddedSamples:
        return store.add_samples(domain, [NewSample(label, jpeg, CAPTURE_SOURCE)])

    return store_frame


class Session(object):
    """One capture: its thread, its progress and its newest frame (for the preview)."""

    def __init__(self, domain: str, request: CaptureRequest, size: int,
                 store_frame: Callable[[str, str, bytes], Any]) -> None:
        self.domain, self.request, self.size = domain, request, size
        self._store_frame = store_frame
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._preview = None  # type: Optional[bytes]
        self._state = {"state": RUNNING, "grabbed": 0, "stored": 0, "duplicates": 0,
                       "failed": 0, "error": None, "started_at": time.time(),
                       "finished_at": None}  # type: Dict[str, Any]
        self._thread = threading.Thread(target=self._run, name="capture-" + domain,
                                        daemon=True)

    # --- what the API reads and does ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(wait_s)

    @property
    def running(self) -> bool:
        with self._lock:
            return self._state["state"] == RUNNING

    def progress(self) -> Progress:
        with self._lock:
            return Progress(domain=self.domain, source=self.request.source.shown,
                            label=self.request.label, count=self.request.count,
                            interval_s=self.request.interval_s, size=self.size,
                            **self._state)

    def preview(self) -> Optional[bytes]:
        with self._lock:
            return self._preview

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            capture = frames.open_capture(self.request.source)
            try:
                self._capture_from(capture)
            finally:
                capture.release()
            complete = self._counts("grabbed") >= self.request.count
            self._finish(SUCCEEDED if complete else STOPPED, None)
        except AgentError as exc:  # a refusal or a source that gave out: said, no traceback
            log.warning("capture into %s from %s failed: %s", self.domain,
                        self.request.source.shown, exc.message)
            self._finish(FAILED, exc.message)
        except Exception as exc:  # the session says why it stopped; the thread ends cleanly
            log.exception("capture into %s from %s failed", self.domain,
                          self.request.source.shown)
            self._finish(FAILED, "%s: %s" % (type(exc).__name__, exc))

    def _capture_from(self, capture: Any) -> None:
        clock = _Clock(self.request.source, capture, self.request.interval_s)
        deadline = time.monotonic() + (self.request.count * (self.request.interval_s
                                                             + FRAME_ALLOWANCE_S)
                                       + OPEN_ALLOWANCE_S)
        misses = 0
        while self._counts("grabbed") < self.request.count and not self._stop.is_set():
            if time.monotonic() > deadline:
                raise InvalidInput("the capture took longer than count x (interval + %gs) "
                                   "+ %gs" % (FRAME_ALLOWANCE_S, OPEN_ALLOWANCE_S))
            if not capture.grab():
                misses = self._missed(misses)
                continue
            misses = 0
            due = clock.tick()
            if due or clock.preview_due():
                jpeg = self._shaped(capture)
                if due and jpeg is None:
                    self._add(failed=1)
                elif due:
                    self._keep(jpeg)

    def _missed(self, misses: int) -> int:
        if not self.request.source.live:
            raise InvalidInput("the video ended after %d of %d frames"
                               % (self._counts("grabbed"), self.request.count))
        if misses + 1 >= MAX_MISSED_GRABS:
            raise InvalidInput("the camera stopped delivering frames")
        self._stop.wait(MISSED_GRAB_WAIT_S)
        return misses + 1

    def _shaped(self, capture: Any) -> Optional[bytes]:
        """The newest grabbed frame at the working size as JPEG (also the preview); None
        when it cannot be decoded."""
        ok, frame = capture.retrieve()
        try:
            if not ok:
                raise InvalidInput("the source gave a frame that could not be decoded")
            jpeg = frames.encode_jpeg(frames.to_working_size(frame, self.size))
        except InvalidInput as exc:
            log.warning("capture into %s: %s", self.domain, exc.message)
            return None
        with self._lock:
            self._preview = jpeg
        return jpeg

    def _keep(self, jpeg: bytes) -> None:
        self._add(grabbed=1)
        try:
            added = self._store_frame(self.domain, self.request.label, jpeg)
        except (InvalidInput, Conflict) as exc:  # this frame is refused; the next may pass
            # (Conflict: these very bytes are a sample of another label already)
            log.warning("capture into %s: a frame was refused: %s", self.domain, exc.message)
            self._add(failed=1)
            return
        self._add(stored=added.added, duplicates=added.duplicates)

    def _counts(self, name: str) -> int:
        with self._lock:
            return self._state[name]

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self._state[name] += value

    def _finish(self, state: str, error: Optional[str]) -> None:
        with self._lock:
            self._state.update(state=state, error=error, finished_at=time.time())
        log.info("capture into %s from %s: %s (%d stored)", self.domain,
                 self.request.source.shown, state, self._counts("stored"))


class _Clock(object):
    """When a grabbed frame is due: by the wall clock for a camera, by the frame's place in
    the file for a video (frame index / fps; one frame per interval when fps is unknown)."""

    def __init__(self, source: Source, capture: Any, interval_s: float) -> None:
        self.live, self.interval_s = source.live, interval_s
        self.fps = 0.0 if source.live else frames.fps_of(capture)
        self.started = time.monotonic()
        self.frames = 0
        self.next_due = 0.0
        self.next_preview = 0.0

    def now(self) -> float:
        if self.live:
            return time.monotonic() - self.started
        return (self.frames - 1) / self.fps if self.fps else (self.frames - 1) * self.interval_s

    def tick(self) -> bool:
        """A frame was grabbed: is it one to keep?"""
        self.frames += 1
        now = self.now()
        if now + 1e-6 < self.next_due:
            return False
        self.next_due = now + self.interval_s
        self.next_preview = now + PREVIEW_EVERY_S
        return True

    def preview_due(self) -> bool:
        if not self.live or self.now() < self.next_preview:
            return False
        self.next_preview = self.now() + PREVIEW_EVERY_S
        return True


class Captures(object):
    """Every domain's capture session (the running ones and the last finished ones)."""

    def __init__(self, store_frame: Callable[[str, str, bytes], Any], videos_dir: str,
                 max_running: int = MAX_RUNNING) -> None:
        self._store_frame = store_frame
        self.videos_dir = videos_dir  # where video-file sources live (sources.py)
        self._max_running = max_running
        self._lock = threading.Lock()
        self._sessions = {}  # type: Dict[str, Session]
        self._one_offs = threading.BoundedSemaphore(max_running)

    def start(self, domain: str, request: CaptureRequest, size: int) -> Session:
        """A new running session, or Conflict (409) when the domain already has one, the
        source is in use by another, or MAX_RUNNING run already."""
        with self._lock:
            running = [s for s in self._sessions.values() if s.running]
            if any(s.domain == domain for s in running):
                raise Conflict("domain %r is already capturing; DELETE its capture first"
                               % domain)
            if request.source.live and any(s.request.source.target == request.source.target
                                           for s in running):  # a file reads twice fine
                raise Conflict("%s is in use by another capture" % request.source.shown)
            if len(running) >= self._max_running:
                raise Conflict("%d captures are running, the most at once"
                               % self._max_running)
            session = Session(domain, request, size, self._store_frame)
            self._sessions.pop(domain, None)
            self._sessions[domain] = session  # the newest last: _forget_old drops the first
            self._forget_old()
            session.start()
            return session

    def get(self, domain: str) -> Session:
        with self._lock:
            session = self._sessions.get(domain)
        if session is None:
            raise UnknownName("domain %r has no capture" % domain)
        return session

    def stop(self, domain: str) -> Session:
        session = self.get(domain)
        session.stop()
        return session

    def preview(self, domain: str, source: Optional[Source], size: int) -> bytes:
        """A frame to aim the camera by, as JPEG: the domain's running capture's newest;
        else, when ``source`` is given, that source's (a running capture's newest when one
        reads it, else the source opened for one frame); else the domain's last capture's
        last frame. UnknownName (404) when there is none."""
        with self._lock:
            mine = self._sessions.get(domain)
            reader = next((s for s in self._sessions.values() if s.running and source
                           and s.request.source.target == source.target), None)
        if mine is not None and mine.running and mine.preview() is not None:
            return mine.preview()
        if reader is not None and reader.preview() is not None:
            return reader.preview()
        if source is not None:
            return self._one_frame(source, size)
        if mine is not None and mine.preview() is not None:
            return mine.preview()
        raise UnknownName("domain %r has no capture frame yet; name a source to look "
                          "through" % domain)

    def _one_frame(self, source: Source, size: int) -> bytes:
        """A one-off frame, at most ``max_running`` at once (a camera opened per request
        must not be a way to tie up the board)."""
        if not self._one_offs.acquire(blocking=False):
            raise Conflict("%d previews are being taken, the most at once"
                           % self._max_running)
        try:
            return frames.snapshot(source, size)
        finally:
            self._one_offs.release()

    def forget(self, domain: str) -> None:
        """Stop the domain's capture, if any, and drop it (the domain is being deleted)."""
        with self._lock:
            session = self._sessions.pop(domain, None)
        if session is not None:
            session.stop()

    def stop_all(self) -> None:
        """Stop every session: all told first, then each waited for (a daemon stopping
        waits for the slowest, not for their sum)."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.stop(wait_s=0)
        for session in sessions:
            session.stop()

    def _forget_old(self) -> None:
        finished = [d for d, s in self._sessions.items() if not s.running]
        for domain in finished[:max(0, len(self._sessions) - MAX_KEPT)]:
            del self._sessions[domain]

    def sessions(self) -> List[Session]:
        with self._lock:
            return list(self._sessions.values())
