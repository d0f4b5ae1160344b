"""Serving the app with bounded connections, read deadlines and a quiet log.

uvicorn alone bounds neither the time a client may take to send its request head nor a body
that stalls: a slowloris client holds its connection (and a file descriptor) for good. The h11
protocol here drops a connection whose request head has not arrived within
``header_timeout_s`` (counted from the connection, or from the end of the previous response),
or whose body has sent nothing for ``body_idle_timeout_s`` while the server was ready to read
it. uvicorn's ``limit_concurrency`` answers 503 past ``max_connections``, and
``h11_max_incomplete_event_size`` caps the request head. uvicorn logs one warning per bad
request; a flood of them is thinned to a few lines a minute.
"""
import asyncio
import logging
import time
from typing import Optional

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

CHECK_EVERY_S = 1.0
LOG_BURST = 10  # uvicorn warnings let through per LOG_WINDOW_S, then one summary
LOG_WINDOW_S = 60.0


class ReadDeadlines(object):
    header_timeout_s = 10.0
    body_idle_timeout_s = 30.0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines on reading a request (see the module doc)."""

    deadlines = ReadDeadlines

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = time.monotonic()  # type: Optional[float]
        self._last_data = time.monotonic()
        self._seen_cycle = None  # a new cycle is a new request: its head arrived in time
        self._timer = self.loop.call_later(CHECK_EVERY_S, self._check_deadlines)

    def data_received(self, data: bytes) -> None:
        self._last_data = time.monotonic()
        super().data_received(data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._timer.cancel()
        super().connection_lost(exc)

    def _check_deadlines(self) -> None:
        if self.transport.is_closing():
            return
        now = time.monotonic()
        state = self.conn.their_state
        answering = self.cycle is not None and not self.cycle.response_complete
        if self.cycle is not self._seen_cycle:  # requests came and went since the last look
            self._seen_cycle, self._waiting_since = self.cycle, None
        if state is h11.IDLE and not answering:  # waiting for a request head
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since > self.deadlines.header_timeout_s:
                self.transport.close()
                return
        else:
            self._waiting_since = None
        if (state is h11.SEND_BODY and not self.flow.read_paused
                and now - self._last_data > self.deadlines.body_idle_timeout_s):
            self.transport.close()  # the app waits on a body that stopped coming
            return
        self._timer = self.loop.call_later(CHECK_EVERY_S, self._check_deadlines)


class ThinnedLog(logging.Filter):
    """At most LOG_BURST records per LOG_WINDOW_S pass; the rest are counted and reported in
    one line when the next window opens (a flood of bad requests cannot fill the disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.window_start = float("-inf")
        self.passed = 0
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        now = time.monotonic()
        if now - self.window_start >= LOG_WINDOW_S:
            if self.dropped:
                record.msg = "%s (and %d similar warnings not logged in the last %.0f s)" % (
                    record.getMessage(), self.dropped, now - self.window_start)
                record.args = ()
            self.window_start, self.passed, self.dropped = now, 0, 0
        self.passed += 1
        if self.passed > LOG_BURST:
            self.dropped += 1
            return False
        return True


def serve(app, settings) -> None:
    """Run ``app`` with the connection, size and time limits of ``settings``."""
    GuardedH11Protocol.deadlines = type("Deadlines", (ReadDeadlines,), {
        "header_timeout_s": settings.header_timeout_s,
        "body_idle_timeout_s": settings.body_idle_timeout_s})
    logging.getLogger("uvicorn.error").addFilter(ThinnedLog())
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            http=GuardedH11Protocol, limit_concurrency=settings.max_connections,
                            backlog=min(2048, settings.max_connections),
                            timeout_keep_alive=5,
                            h11_max_incomplete_event_size=settings.max_header_kb << 10)
    uvicorn.Server(config).run()
