"""Failpoints for the fault-injection tests (stdlib only).

``DEVICE_AGENT_FAILPOINT=NAME`` (or ``NAME@N`` for the N-th time) makes the process kill
itself with SIGKILL when it reaches :func:`failpoint` ``(NAME)`` -- a power cut at an exact
place, such as between a checkpoint's two files or in the middle of promoting an adapter.
Unset, a failpoint costs one dictionary lookup.
"""
import os
import signal

ENV = "DEVICE_AGENT_FAILPOINT"
_hits = {}  # type: dict


def failpoint(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition("@")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
