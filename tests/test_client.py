"""The HTTP client of push/status/demo: domain names checked with the server's own rule
before anything is sent, path parts URL-encoded, and a refusal the server sends while the
body is still streaming reported as that refusal (not as a broken pipe). Loopback servers of
a few lines stand in for the daemon."""
import http.server
import json
import socket
import threading

import pytest

from device_agent.client import Client, ServerUnreachable, domain_path
from device_agent.errors import AgentError, InvalidInput, PayloadTooLarge, Unauthorized
from device_agent.store.db import check_domain_name


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("name", ["a b", "a?b", "a#b", "Bad/Name", "..", "", "-lead", "UPPER",
                                  "x" * 64, "caf\u00e9"])
def test_a_bad_domain_name_is_refused_before_anything_is_sent(name):
    client = Client("http://127.0.0.1:%d" % _closed_port(), "token")  # nothing listens
    for call in (lambda: client.domain(name), lambda: client.start_job(name, {}),
                 lambda: client.upload_dataset(name, __file__),
                 lambda: client.predict(name, [__file__])):
        with pytest.raises(InvalidInput) as caught:
            call()
        assert repr(name) in caught.value.message and "\n" not in caught.value.message
        assert caught.value.exit_code == 2


@pytest.mark.parametrize("name", ["digits", "a", "flowers_2", "x-1", "0" * 63])
def test_a_name_the_server_accepts_is_sent(name):
    check_domain_name(name)  # the server's rule, the one the client uses
    client = Client("http://127.0.0.1:%d" % _closed_port(), "token")
    with pytest.raises(ServerUnreachable):  # it got as far as connecting
        client.domain(name)


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths = []  # type: list

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = b'{"job_id": "j1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.paths = []
    yield "http://127.0.0.1:%d" % server.server_address[1], _Recorder.paths
    server.shutdown()
    server.server_close()


def test_path_parts_are_url_encoded(recorder):
    base, paths = recorder
    client = Client(base, "token")
    client.job("a/b?c#d e")
    client.domain("flowers_2")
    client.start_job("flowers_2", {"epochs": 1})
    Client(base + "/agent/", "token").domains()  # a daemon behind a proxy's sub-path
    assert paths == ["/v1/jobs/a%2Fb%3Fc%23d%20e", "/v1/domains/flowers_2",
                     "/v1/domains/flowers_2/jobs", "/agent/v1/domains"]
    assert domain_path("flowers_2", "predict") == "/v1/domains/flowers_2/predict"


@pytest.mark.parametrize("server", ["127.0.0.1:8470", "ftp://host", "http://", "http://h:x"])
def test_a_bad_server_url_is_one_clear_error(server):
    with pytest.raises(InvalidInput) as caught:
        Client(server, "token")
    assert "http://127.0.0.1:8470" in caught.value.message


def test_a_token_an_http_header_cannot_carry_is_refused():
    with pytest.raises(InvalidInput):
        Client("http://127.0.0.1:%d" % _closed_port(), "tok\nen").domains()


class _EarlyRefusal(object):
    """A server that reads a request's headers, answers ``status`` with a problem+json body
    at once -- never reading the body -- and closes: a daemon refusing an upload early."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        body = json.dumps({"status": status, "code": code, "detail": detail}).encode()
        self.answer = ("HTTP/1.1 %d Refused\r\nContent-Type: application/problem+json\r\n"
                       "Content-Length: %d\r\nConnection: close\r\n\r\n" % (status, len(body))
                       ).encode() + body
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.closed = threading.Event()  # the answer is sent and the connection closed
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(1024)
            connection.sendall(self.answer)
        self.closed.set()
        self.listener.close()


def test_an_early_refusal_is_read_after_the_send_fails():
    server = _EarlyRefusal(413, "payload_too_large", "upload over the 1 MB limit")
    progress = {"chunks_after_close": 0, "finished": False}

    def slow_body():
        """Sends a little, then waits until the server has answered and closed, then keeps
        sending: every byte from here on goes to a closed connection, so a send must fail
        (EPIPE or ECONNRESET), deterministically, whatever the machine's load."""
        yield b"x" * 1024
        assert server.closed.wait(30)
        for _ in range(4096):  # 256 MB: more than any socket buffer can swallow
            progress["chunks_after_close"] += 1
            yield b"x" * 65536
        progress["finished"] = True

    client = Client(server.url, "token")
    with pytest.raises(PayloadTooLarge) as caught:
        client.request("POST", domain_path("flowers", "datasets"), slow_body(),
                       {"Content-Length": str(1024 + 4096 * 65536)})
    assert progress["chunks_after_close"] > 0 and not progress["finished"]  # a send did fail
    assert caught.value.message == "HTTP 413: upload over the 1 MB limit"
    assert caught.value.http_status == 413 and caught.value.exit_code == 2


def test_an_upload_refused_early_reports_the_refusal(tmp_path):
    archive = str(tmp_path / "big.tar.gz")
    with open(archive, "wb") as handle:  # sparse: 64 MB to stream, nothing on disk
        handle.truncate(64 << 20)
    server = _EarlyRefusal(401, "unauthorized", "missing or wrong API token")
    with pytest.raises(Unauthorized) as caught:
        Client(server.url, "wrong").upload_dataset("flowers", archive)
    # the client may read the answer before the server thread marks its close: wait for it
    assert server.closed.wait(10)
    assert caught.value.message == "HTTP 401: missing or wrong API token"
    assert caught.value.exit_code == 1


def test_a_server_that_closes_without_answering_is_unreachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def hang_up() -> None:
        connection, _ = listener.accept()
        connection.recv(1024)
        connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    with pytest.raises(ServerUnreachable) as caught:
        Client("http://127.0.0.1:%d" % listener.getsockname()[1], "t").domains()
    thread.join(10)
    listener.close()
    assert caught.value.message.startswith("lost the connection to http://127.0.0.1:")
    assert caught.value.exit_code == 5 and "\n" not in caught.value.message


def test_a_reply_that_is_not_json_is_one_clear_error(recorder, monkeypatch):
    base, _ = recorder
    monkeypatch.setattr(_Recorder, "do_GET", _html_page)
    with pytest.raises(AgentError) as caught:
        Client(base, "token").domains()
    assert "not JSON" in caught.value.message and "device-agent daemon" in caught.value.message


def _html_page(handler) -> None:
    body = b"<html>some other web server</html>"
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
