"""Spawns the torch worker, talks to it, and restarts it when it dies (stdlib only).

The worker's interpreter is part of ``command`` (on JetPack 4 the API runs on python3.8
and the worker on the system python3.6 with NVIDIA's torch). A reader thread pairs
``result``/``error`` replies with waiting requests and hands ``job_event`` and ``job_done``
messages to ``on_event``. A worker that has not said hello within ``hello_timeout_s`` (hung
importing torch, stuck on a driver) is killed and started again like one that died.
When the worker exits -- a segfault, an OOM kill, kill -9 -- every waiting
request fails with WorkerUnavailable, ``on_exit`` is called (the job runner requeues its
job), and the worker is started again after a capped backoff.
"""
import itertools
import logging
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from device_agent.daemon.heartbeat import Heartbeat
from device_agent.errors import WorkerUnavailable, from_code
from device_agent.protocol import messages
from device_agent.protocol.framing import ProtocolError
from device_agent.protocol.peer import Peer

log = logging.getLogger("device_agent.daemon")
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HELLO_TIMEOUT_S = 120.0


class _Pending(object):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply = None  # type: Optional[Dict[str, object]]


class WorkerSupervisor(object):
    def __init__(self, command: List[str], on_event: Callable[[Dict[str, object]], None],
                 on_exit: Callable[[], None], env: Optional[Dict[str, str]] = None,
                 backoff: Tuple[float, ...] = BACKOFF_S, stuck_after_s: float = 120.0,
                 hello_timeout_s: float = HELLO_TIMEOUT_S) -> None:
        self.command = command
        self.on_event = on_event
        self.on_exit = on_exit
        self.env = env
        self.backoff = backoff
        self.hello_timeout_s = hello_timeout_s
        # Held around a request that keeps the worker's request loop for minutes (an
        # export): the runner starts no job meanwhile, else its train request would time out
        # behind it and the job be retried while the worker then trains it anyway.
        self.long_request = threading.Lock()
        self.state = "stopped"  # starting | ready | restarting | stopped
        self.hello = None  # type: Optional[Dict[str, object]]
        self.restarts = 0
        self.last_exit_code = None  # type: Optional[int]
        self._proc = None  # type: Optional[subprocess.Popen]
        self._peer = None  # type: Optional[Peer]
        self._pending = {}  # type: Dict[int, _Pending]
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]
        # Beats per frame; waiting for the next frame (an idle worker) is not a hang, a
        # callback (the runner's store writes) that never returns is.
        self.heartbeat = Heartbeat("worker-supervisor", stuck_after_s)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = self.heartbeat.start(self._run)

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.heartbeat.stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self.request("shutdown", timeout=timeout)
            except Exception:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = "stopped"

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def health(self) -> Dict[str, object]:
        return {"state": self.state, "pid": self.pid, "restarts": self.restarts,
                "last_exit_code": self.last_exit_code,
                "worker": {k: self.hello[k] for k in ("python", "torch", "device")}
                if self.hello else None,
                "threads": self.hello.get("threads") if self.hello else None}

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self.state = "starting" if attempt == 0 else "restarting"
            started = time.time()
            try:
                self._serve_one_process()
            except Exception as exc:  # a failed spawn or on_exit: restart, never give up
                self.heartbeat.failed(exc, "serving the worker")
            if self._stopping.is_set():
                break
            self.restarts += 1
            attempt = 0 if time.time() - started > 60 else attempt + 1  # healthy for a minute
            with self.heartbeat.waiting():
                self._stopping.wait(self.backoff[min(attempt, len(self.backoff) - 1)])

    def _serve_one_process(self) -> None:
        proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=self.env)
        self._proc, self._peer = proc, Peer(proc.stdout, proc.stdin)
        deadline = threading.Timer(self.hello_timeout_s, self._kill_if_silent, (proc,))
        deadline.daemon = True
        deadline.start()
        try:
            self._read_loop()
        except (ProtocolError, OSError, ValueError):
            pass  # a garbled or broken stream: the process is restarted below
        finally:
            deadline.cancel()
            self._ready.clear()
            self.state = "restarting"  # before anyone is told, so nobody dispatches to it
            if proc.poll() is None:
                proc.kill()
            self.last_exit_code = proc.wait()
            self._fail_pending()
            self.on_exit()  # the runner settles its job (it retries store writes itself)

    def _kill_if_silent(self, proc: subprocess.Popen) -> None:
        """The hello deadline passed: kill the worker if it has not spoken (the reader then
        sees the stream end and the process is restarted)."""
        if self._proc is proc and not self._ready.is_set() and proc.poll() is None:
            log.warning("the worker (pid %d) sent no hello within %.0f s: killing it",
                        proc.pid, self.hello_timeout_s)
            proc.kill()

    def _read_loop(self) -> None:
        while True:
            with self.heartbeat.waiting():  # an idle worker sends nothing for hours
                frame = self._peer.receive()
            if frame is None:
                return
            header, _ = frame
            kind = header["kind"]
            if kind == "hello":
                if header["protocol"] != messages.PROTOCOL_VERSION:
                    raise ProtocolError("worker speaks protocol %r" % header["protocol"])
                self.hello = header
                self.state = "ready"
                self._ready.set()
            elif kind in ("job_event", "job_done"):
                try:
                    self.on_event(header)
                except Exception as exc:  # one message lost, never the supervision
                    self.heartbeat.failed(exc, "handling a worker's %s" % kind)
            elif kind in ("result", "error"):
                with self._lock:
                    pending = self._pending.pop(header["reply_to"], None)
                if pending is not None:
                    pending.reply = header
                    pending.done.set()

    def _fail_pending(self) -> None:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for waiting in pending:
            waiting.done.set()  # no reply: the request fails with WorkerUnavailable

    # --- requests -------------------------------------------------------------------------

    def request(self, kind: str, payload: bytes = b"", timeout: float = 60.0,
                **fields) -> Dict[str, object]:
        """Send a request and wait for its reply's data; errors come back as AgentErrors."""
        if not self._ready.is_set() and kind != "shutdown":
            raise WorkerUnavailable("the worker is %s" % self.state)
        peer = self._peer
        waiting = _Pending()
        header = messages.make(kind, 0, **fields)
        with self._lock:
            header["id"] = msg_id = next(self._ids)
            self._pending[msg_id] = waiting
        try:
            peer.send_header(header, payload)
        except (OSError, ValueError) as exc:
            with self._lock:
                self._pending.pop(msg_id, None)
            raise WorkerUnavailable("the worker went away: %s" % exc) from exc
        if not waiting.done.wait(timeout):
            with self._lock:
                self._pending.pop(msg_id, None)
            raise WorkerUnavailable("the worker did not answer %s within %.0f s" % (kind, timeout))
        reply = waiting.reply
        if reply is None:
            raise WorkerUnavailable("the worker died while answering %s" % kind)
        if reply["kind"] == "error":
            raise from_code(str(reply["code"]), str(reply["message"]))
        return reply["data"]
