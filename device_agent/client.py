"""A small HTTP client of the daemon's API (stdlib only: runs wherever the CLI runs).

Problem+json errors come back as the agent's own errors (same code, same exit code), so
``device-agent push`` fails the way ``device-agent train`` does. Every error is one line:
a domain name is checked with the server's own rule before anything is sent, every path
part is URL-encoded, and a refusal the server sends while a body is still streaming (a bad
token, an upload over its limit) is read and reported as that refusal, not as a broken pipe.

It speaks HTTP through ``http.client`` rather than urllib because urllib drops the
connection, and the server's answer with it, when a send fails; so no HTTP proxy is used.
"""
import http.client
import json
import os
import tarfile
import tempfile
import urllib.parse
import uuid
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from device_agent.errors import AgentError, InvalidInput, from_code
from device_agent.store.db import check_domain_name
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


def domain_path(domain: str, *rest: str) -> str:
    """``/v1/domains/<domain>[/rest...]`` for a name the server would accept, else
    InvalidInput before anything is sent (the rule is the store's own, not a copy)."""
    try:
        check_domain_name(domain)
    except InvalidInput as error:
        raise InvalidInput("%r is not a domain name: %s" % (domain, error.message)) from None
    return "/v1/domains/" + "/".join(quote(part) for part in (domain,) + rest)


def quote(part: object) -> str:
    """One path segment, percent-encoded: '/', '?', '#' and spaces cannot reshape the URL."""
    return urllib.parse.quote(str(part), safe="")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _reason(error: BaseException) -> str:
    """What went wrong with a connection, in a few words."""
    return _one_line(getattr(error, "strerror", None) or error) or type(error).__name__


class Client(object):
    def __init__(self, server: str = DEFAULT_SERVER, token: Optional[str] = None,
                 timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(server)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise InvalidInput("the server must be a URL like http://127.0.0.1:8470, not %r"
                               % server)
        self.server = server.rstrip("/")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, port
        # a daemon behind a reverse proxy's sub-path
        self._prefix = urllib.parse.quote(parts.path.rstrip("/"), safe="/%")
        self.token = token
        self.timeout = timeout

    # --- plumbing -----------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._scheme == "https" else \
            http.client.HTTPConnection
        return kind(self._host, self._port, timeout=self.timeout)

    def _headers(self, headers: Dict[str, str]) -> Dict[str, str]:
        headers = dict(headers)
        if self.token:
            if any(not (" " < c <= "~") for c in self.token):
                raise InvalidInput("the API token holds characters an HTTP header cannot carry "
                                   "(spaces, control or non-ASCII characters)")
            headers["Authorization"] = "Bearer " + self.token
        return headers

    def request(self, method: str, path: str, body: Iterable[bytes] = (),
                headers: Optional[Dict[str, str]] = None) -> bytes:
        """Send ``body`` (chunks) and return the answer's bytes; an HTTP error status raises
        the agent error its problem+json body names.

        A server may answer before it has read the whole body -- a refusal -- and close; the
        next send then fails (EPIPE, ECONNRESET) although the answer already waits in this
        socket's receive buffer. So a failed send is remembered, the answer is read all the
        same, and the connection counts as lost only when there is no answer to read."""
        headers = self._headers(headers or {})
        connection = self._connection()
        send_error = None  # type: Optional[OSError]
        try:
            try:
                connection.putrequest(method, self._prefix + path, skip_accept_encoding=True)
                for name, value in headers.items():
                    connection.putheader(name, value)
                connection.endheaders()
            except OSError as error:
                raise ServerUnreachable("cannot reach %s: %s" % (self.server, _reason(error))
                                        ) from None
            try:
                for chunk in body:
                    connection.send(chunk)
            except OSError as error:
                send_error = error
            try:
                response = connection.getresponse()
                status, reason, text = response.status, response.reason, response.read()
            except (OSError, http.client.HTTPException) as error:
                cause = send_error if send_error is not None else error
                raise ServerUnreachable("lost the connection to %s: %s" % (
                    self.server, _reason(cause))) from None
        finally:
            connection.close()
        if status >= 400:
            raise _as_agent_error(status, reason, text)
        return text

    def call(self, method: str, path: str, payload: Optional[dict] = None) -> object:
        body = json.dumps(payload).encode() if payload is not None else b""
        headers = {"Content-Length": str(len(body))}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        return self._json(self.request(method, path, [body], headers), path)

    def upload(self, method: str, path: str, files: List[Tuple[str, str]]) -> object:
        """multipart/form-data with ``files`` [(filename, local path)] as the field "file",
        streamed from disk with a declared length (never held in memory whole)."""
        boundary = uuid.uuid4().hex
        heads = [("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n"
                  % (boundary, _form_filename(name))).encode() for name, _ in files]
        tail = ("--%s--\r\n" % boundary).encode()
        try:
            length = sum(len(h) + os.path.getsize(p) + 2 for h, (_, p) in zip(heads, files))
        except OSError as error:
            raise InvalidInput("cannot read %s: %s" % (error.filename, error.strerror)) from None

        def body() -> Iterator[bytes]:
            for head, (_, local) in zip(heads, files):
                yield head
                with open(local, "rb") as handle:
                    yield from iter(lambda: handle.read(CHUNK), b"")
                yield b"\r\n"
            yield tail

        headers = {"Content-Type": "multipart/form-data; boundary=" + boundary,
                   "Content-Length": str(length + len(tail))}
        return self._json(self.request(method, path, body(), headers), path)

    def _json(self, text: bytes, path: str) -> object:
        if not text:
            return None
        try:
            return json.loads(text.decode("utf-8"))
        except ValueError:
            raise AgentError("%s%s answered with something that is not JSON: is it a "
                             "device-agent daemon?" % (self.server, path.split("?")[0])
                             ) from None

    # --- the API ------------------------------------------------------------------------

    def health(self) -> Dict[str, object]:
        return self.call("GET", "/healthz")

    def upload_dataset(self, domain: str, archive: str) -> Dict[str, object]:
        return self.upload("POST", domain_path(domain, "datasets"), [(archive, archive)])

    def start_job(self, domain: str, params: Dict[str, object]) -> str:
        return self.call("POST", domain_path(domain, "jobs"), params)["job_id"]

    def job(self, job_id: str) -> Dict[str, object]:
        return self.call("GET", "/v1/jobs/" + quote(job_id))

    def jobs(self) -> List[Dict[str, object]]:
        return self.call("GET", "/v1/jobs")

    def domain(self, name: str) -> Dict[str, object]:
        return self.call("GET", domain_path(name))

    def domains(self) -> List[Dict[str, object]]:
        return self.call("GET", "/v1/domains")

    def predict(self, domain: str, images: List[str], top_k: int = 3) -> Dict[str, object]:
        return self.upload("POST", domain_path(domain, "predict") + "?top_k=%d" % top_k,
                           [(p, p) for p in images])


def _form_filename(name: str) -> str:
    """A file's base name for a form part's quoted ``filename``, percent-encoding what
    would end the quotes or the header line (as browsers do)."""
    base = os.path.basename(name)
    return base.replace("\\", "%5C").replace('"', "%22").replace("\r", "%0D").replace(
        "\n", "%0A")


def _as_agent_error(status: int, reason: str, text: bytes) -> AgentError:
    try:
        body = json.loads(text.decode("utf-8"))
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = body.get("detail") or reason or "no detail"
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    rebuilt = from_code(str(body.get("code") or "http_%d" % status),
                        "HTTP %d: %s" % (status, _one_line(detail)))
    rebuilt.http_status = status
    return rebuilt


def archive_folder(folder: str) -> str:
    """An ImageFolder as a temporary .tar.gz (regular files only; links are not followed)."""
    if not os.path.isdir(folder):
        raise InvalidInput("%s is not a directory" % folder)
    handle, path = tempfile.mkstemp(suffix=".tar.gz", prefix="device-agent-")
    os.close(handle)
    try:
        with tarfile.open(path, "w:gz") as tar:
            for directory, subdirs, names in os.walk(folder):
                subdirs.sort()
                for name in sorted(names):
                    full = os.path.join(directory, name)
                    if os.path.isfile(full) and not os.path.islink(full):
                        tar.add(full, arcname=os.path.relpath(full, folder))
    except OSError as error:
        os.unlink(path)
        raise InvalidInput("cannot archive %s: %s%s" % (
            folder, error.strerror or error,
            " (%s)" % error.filename if error.filename else "")) from None
    return path
