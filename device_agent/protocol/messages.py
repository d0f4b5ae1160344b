"""Messages between the API process and the worker: versioned, typed, validated at the edge.

Every frame header is ``{"v": PROTOCOL_VERSION, "kind": ..., "id": n, ...fields}``. The API
sends requests; the worker answers each with a ``result`` or an ``error`` naming the request's
id, and volunteers ``hello`` (once, first), ``job_event`` (a running job's progress) and
``job_done`` (its end: exactly one per job the worker accepted, carrying the report). An
unknown kind, a missing or mistyped field, or another protocol version is a ProtocolError,
never a guess.
"""
from typing import Dict, List

from device_agent.errors import AgentError
from device_agent.protocol.framing import ProtocolError

# 2: hello carries the worker's thread policy; 3: "forget" drops a deleted domain from the
# worker's inference cache; 4: "progress" becomes "job_event", and a job's end is its own
# message, "job_done" (state, report, error), no longer a progress event; "export" writes (or
# serves the cached) ONNX bundle of an adapter version; 5: "train" names the adapter a job
# may warm-start from ("warm_from", "" for none: issue 14)
PROTOCOL_VERSION = 5
# (job_done's report is a JobReport's dict, read by name: a field added to the report, such as
# val_confusion, is left out by an older reader and absent to a newer one -- no new version.)
JOB_OUTCOMES = ("succeeded", "failed", "cancelled")

SPECS = {
    # API -> worker
    "train": {"job_id": str, "domain": str, "dataset_dir": str, "out_dir": str, "params": dict,
              "warm_from": str},
    "cancel": {"job_id": str},
    "predict": {"domain": str, "adapter_dir": str, "top_k": int, "parts": list},
    "load": {"domain": str, "adapter_dir": str},
    "forget": {"domain": str},
    "export": {"domain": str, "adapter_dir": str, "cache_dir": str, "input_norm": str,
               "softmax": bool, "opset": int, "parity": dict},
    "status": {},
    "shutdown": {},
    # worker -> API
    "hello": {"agent_version": str, "protocol": int, "python": str, "torch": str, "device": str,
              "threads": dict},
    "job_event": {"job_id": str, "event": dict},
    "job_done": {"job_id": str, "state": str, "report": dict, "error": dict},
    "result": {"reply_to": int, "data": dict},
    "error": {"reply_to": int, "code": str, "message": str},
}
REQUESTS = ("train", "cancel", "predict", "load", "forget", "status", "shutdown", "export")
_ENVELOPE = ("v", "kind", "id")


def make(kind: str, msg_id: int = 0, **fields) -> Dict[str, object]:
    header = {"v": PROTOCOL_VERSION, "kind": kind, "id": msg_id}
    header.update(fields)
    return validate(header)


def _is(value: object, kind: type) -> bool:
    if kind is int:  # JSON has no separate bool, Python's bool is an int: refuse it here
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def validate(header: Dict[str, object]) -> Dict[str, object]:
    """Return ``header`` if it is a well-formed message of this protocol version."""
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("protocol version %r; this side speaks %d"
                            % (header.get("v"), PROTOCOL_VERSION))
    kind = header.get("kind")
    if kind not in SPECS:
        raise ProtocolError("unknown message kind %r" % (kind,))
    if not _is(header.get("id"), int) or header["id"] < 0:
        raise ProtocolError("message id must be a non-negative integer")
    spec = SPECS[kind]
    for field, field_type in spec.items():
        if field not in header:
            raise ProtocolError("%s message lacks %r" % (kind, field))
        if not _is(header[field], field_type):
            raise ProtocolError("%s.%s must be %s" % (kind, field, field_type.__name__))
    unknown = sorted(set(header) - set(spec) - set(_ENVELOPE))
    if unknown:
        raise ProtocolError("%s message has unknown fields %s" % (kind, ", ".join(unknown)))
    if kind == "job_done" and header["state"] not in JOB_OUTCOMES:
        raise ProtocolError("job_done.state must be one of %s" % ", ".join(JOB_OUTCOMES))
    return header


def split_parts(header: Dict[str, object], payload: bytes) -> List[bytes]:
    """A ``predict`` payload carries several images back to back; ``parts`` has their sizes."""
    parts = header["parts"]
    if not all(_is(size, int) and size >= 0 for size in parts) or sum(parts) != len(payload):
        raise ProtocolError("parts %r do not add up to the %d-byte payload" % (parts, len(payload)))
    pieces, offset = [], 0
    for size in parts:
        pieces.append(payload[offset:offset + size])
        offset += size
    return pieces


def error_reply(reply_to: int, error: BaseException) -> Dict[str, object]:
    """The one place an exception becomes a wire error: AgentErrors keep their code."""
    if isinstance(error, AgentError):
        return make("error", reply_to=reply_to, code=error.code, message=error.message)
    if isinstance(error, ProtocolError):
        return make("error", reply_to=reply_to, code="protocol_error", message=str(error))
    return make("error", reply_to=reply_to, code="internal_error",
                message="%s: %s" % (type(error).__name__, error))
