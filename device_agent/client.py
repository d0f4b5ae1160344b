"""A small HTTP client of the daemon's API (stdlib only: runs wherever the CLI runs).

Problem+json errors come back as the agent's own errors (same code, same exit code), so
``device-agent push`` fails the way ``device-agent train`` does.
"""
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
from typing import Dict, Iterator, List, Optional, Tuple

from device_agent.errors import AgentError, InvalidInput, from_code
from device_agent.store.layout import DataPaths, default_data_dir

DEFAULT_SERVER = "http://127.0.0.1:8470"
CHUNK = 1 << 16


class ServerUnreachable(AgentError):
    code = "server_unreachable"
    exit_code = 5


def resolve_token(token: Optional[str] = None) -> str:
    """``--token``, else $DEVICE_AGENT_TOKEN, else the token file of the local data dir."""
    if token:
        return token
    if os.environ.get("DEVICE_AGENT_TOKEN"):
        return os.environ["DEVICE_AGENT_TOKEN"]
    path = DataPaths(default_data_dir()).token
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        raise InvalidInput("no API token: pass --token, set DEVICE_AGENT_TOKEN, or run on the "
                           "daemon's machine (it reads %s)" % path) from None


class Client(object):
    def __init__(self, server: str = DEFAULT_SERVER, token: Optional[str] = None,
                 timeout: float = 60.0) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    # --- plumbing -----------------------------------------------------------------------

    def _open(self, method: str, path: str, body=None, headers: Optional[Dict[str, str]] = None):
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        request = urllib.request.Request(self.server + path, data=body, method=method,
                                         headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            raise _as_agent_error(error) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachable("cannot reach %s: %s" % (self.server, reason)) from None

    def call(self, method: str, path: str, payload: Optional[dict] = None) -> object:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        with self._open(method, path, body, headers) as response:
            text = response.read()
        return json.loads(text.decode("utf-8")) if text else None

    def upload(self, method: str, path: str, files: List[Tuple[str, str]]) -> object:
        """multipart/form-data with ``files`` [(filename, local path)] as the field "file",
        streamed from disk with a declared length (never held in memory whole)."""
        boundary = uuid.uuid4().hex
        heads = [("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n"
                  % (boundary, os.path.basename(name))).encode() for name, _ in files]
        tail = ("--%s--\r\n" % boundary).encode()
        length = sum(len(h) + os.path.getsize(p) + 2 for h, (_, p) in zip(heads, files))

        def body() -> Iterator[bytes]:
            for head, (_, local) in zip(heads, files):
                yield head
                with open(local, "rb") as handle:
                    yield from iter(lambda: handle.read(CHUNK), b"")
                yield b"\r\n"
            yield tail

        headers = {"Content-Type": "multipart/form-data; boundary=" + boundary,
                   "Content-Length": str(length + len(tail))}
        with self._open(method, path, body(), headers) as response:
            return json.loads(response.read().decode("utf-8"))

    # --- the API ------------------------------------------------------------------------

    def health(self) -> Dict[str, object]:
        return self.call("GET", "/healthz")

    def upload_dataset(self, domain: str, archive: str) -> Dict[str, object]:
        return self.upload("POST", "/v1/domains/%s/datasets" % domain, [(archive, archive)])

    def start_job(self, domain: str, params: Dict[str, object]) -> str:
        return self.call("POST", "/v1/domains/%s/jobs" % domain, params)["job_id"]

    def job(self, job_id: str) -> Dict[str, object]:
        return self.call("GET", "/v1/jobs/%s" % job_id)

    def jobs(self) -> List[Dict[str, object]]:
        return self.call("GET", "/v1/jobs")

    def domain(self, name: str) -> Dict[str, object]:
        return self.call("GET", "/v1/domains/%s" % name)

    def domains(self) -> List[Dict[str, object]]:
        return self.call("GET", "/v1/domains")

    def predict(self, domain: str, images: List[str], top_k: int = 3) -> Dict[str, object]:
        return self.upload("POST", "/v1/domains/%s/predict?top_k=%d" % (domain, top_k),
                           [(p, p) for p in images])


def _as_agent_error(error: urllib.error.HTTPError) -> AgentError:
    try:
        body = json.loads(error.read().decode("utf-8"))
    except ValueError:
        body = {}
    detail = body.get("detail", error.reason) if isinstance(body, dict) else error.reason
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    rebuilt = from_code(str(body.get("code", "http_%d" % error.code)) if isinstance(body, dict)
                        else "http_%d" % error.code, "HTTP %d: %s" % (error.code, detail))
    rebuilt.http_status = error.code
    return rebuilt


def archive_folder(folder: str) -> str:
    """An ImageFolder as a temporary .tar.gz (regular files only; links are not followed)."""
    if not os.path.isdir(folder):
        raise InvalidInput("%s is not a directory" % folder)
    handle, path = tempfile.mkstemp(suffix=".tar.gz", prefix="device-agent-")
    os.close(handle)
    with tarfile.open(path, "w:gz") as tar:
        for directory, subdirs, names in os.walk(folder):
            subdirs.sort()
            for name in sorted(names):
                full = os.path.join(directory, name)
                if os.path.isfile(full) and not os.path.islink(full):
                    tar.add(full, arcname=os.path.relpath(full, folder))
    return path
