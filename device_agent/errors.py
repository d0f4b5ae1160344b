"""One error vocabulary for the whole agent (stdlib only; both interpreters import it).

Every error has a stable machine-readable ``code`` and an HTTP status hint, so the CLI,
the worker protocol and the API all report the same failure the same way.
"""


class AgentError(Exception):
    code = "agent_error"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class InvalidInput(AgentError):
    """Bad arguments, a bad dataset layout, an unreadable image."""

    code = "invalid_input"
    http_status = 400
    exit_code = 2


class UnknownName(InvalidInput):
    """An unknown backbone, method or domain."""

    code = "unknown_name"
    http_status = 404


class Conflict(AgentError):
    """The request contradicts the current state: a busy worker, an illegal job transition."""

    code = "conflict"
    http_status = 409
    exit_code = 2


class WeightsNotFound(AgentError):
    """A backbone's weights file is not provisioned on this machine."""

    code = "weights_not_found"
    http_status = 503
    exit_code = 3


class WeightsMismatch(AgentError):
    """A weights file or adapter does not match what the manifest or backbone says."""

    code = "weights_mismatch"
    http_status = 409
    exit_code = 3


class ArtifactError(InvalidInput):
    """An adapter artifact is malformed or unsafe."""

    code = "bad_artifact"
    http_status = 422


class MemoryBudgetExceeded(AgentError):
    """A step cannot fit the memory limit even at the smallest batch."""

    code = "memory_budget_exceeded"
    http_status = 507
    exit_code = 4


class Unauthorized(AgentError):
    """A missing or wrong API token."""

    code = "unauthorized"
    http_status = 401


class PayloadTooLarge(InvalidInput):
    """An upload over its size limit."""

    code = "payload_too_large"
    http_status = 413


class ImageTooLarge(PayloadTooLarge):
    """An image whose header declares more pixels than the decode limit (refused before it
    is decoded: a 10 KB PNG can declare 9000x9000 and cost 700 MB to decode)."""

    code = "image_too_large"
    http_status = 413


class EngineBuildFailed(AgentError):
    """TensorRT is present but could not build an engine from the ONNX file."""

    code = "engine_build_failed"
    http_status = 422


class ExportParityError(AgentError):
    """An ONNX export whose outputs differ from PyTorch's beyond the tolerance: refused,
    nothing is offered (issue 13)."""

    code = "export_parity_failed"
    http_status = 422
    exit_code = 5


class WorkerUnavailable(AgentError):
    """The worker process is starting, restarting or died while answering."""

    code = "worker_unavailable"
    http_status = 503


# capture (issue 14)
class CaptureUnavailable(AgentError):
    """What a capture needs is missing from this machine: OpenCV itself, or the GStreamer
    support a CSI camera is read through."""

    code = "capture_unavailable"
    http_status = 501


def from_code(code: str, message: str) -> AgentError:
    """Rebuild an error that crossed the worker protocol, keeping its code and status."""
    classes = {cls.code: cls for cls in (AgentError, InvalidInput, UnknownName, Conflict,
                                         WeightsNotFound, WeightsMismatch, ArtifactError,
                                         MemoryBudgetExceeded, WorkerUnavailable, Unauthorized,
                                         PayloadTooLarge, ImageTooLarge, ExportParityError,
                                         EngineBuildFailed, CaptureUnavailable)}
    error = classes.get(code, AgentError)(message)
    if code not in classes:
        error.code = code
    return error
