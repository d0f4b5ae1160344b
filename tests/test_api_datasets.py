"""The datasets router: uploads refused as they stream, bad archives refused with nothing
left behind."""
import json
import os
import socket

import pytest
from api_calls import TOKEN, UPLOAD_LIMIT_MB, call, multipart

pytest.importorskip("fastapi")


def _raw_post(base, path, headers, chunks):
    """Send a request by hand (chunked if asked); returns the status and the body's JSON."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % (path, TOKEN)
        sock.sendall((head + "".join("%s: %s\r\n" % h for h in headers) + "\r\n").encode())
        sent = 0
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: refused early
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    status = int(response.split(b" ", 2)[1])
    return status, json.loads(response.split(b"\r\n\r\n", 1)[1]), sent


def test_uploads_over_the_limit_are_refused_as_they_stream(server):
    base, data_dir = server
    limit = UPLOAD_LIMIT_MB << 20
    declared = [("Content-Type", "multipart/form-data; boundary=x"),
                ("Content-Length", str(50 * limit))]
    status, problem, _ = _raw_post(base, "/v1/domains/big/datasets", declared, [])
    assert status == 413 and problem["code"] == "payload_too_large"
    def chunked_body():  # a valid form whose file part never ends
        preamble = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.zip"'
                    b'\r\nContent-Type: application/zip\r\n\r\n')
        for piece in [preamble] + [b"0" * 65536] * (50 * limit // 65536):
            yield b"%x\r\n%s\r\n" % (len(piece), piece)

    chunked = [("Content-Type", "multipart/form-data; boundary=x"),
               ("Transfer-Encoding", "chunked")]
    status, problem, sent = _raw_post(base, "/v1/domains/big/datasets", chunked, chunked_body())
    assert status == 413 and problem["code"] == "payload_too_large", problem
    assert sent < 10 * limit  # the server stopped reading long before the 50 MB were sent
    assert call(base, "GET", "/v1/domains/big")[0] == 404
    uploads = os.path.join(data_dir, "uploads")
    assert not os.path.isdir(uploads) or os.listdir(uploads) == []


@pytest.mark.parametrize("payload,status", [(b"not an archive", 400), (b"PK\x03\x04junk", 400)])
def test_a_bad_archive_is_refused_and_changes_nothing(server, payload, status):
    base, data_dir = server
    before = call(base, "GET", "/v1/domains")[1]
    body, content_type = multipart([("file", ("x.zip", payload))])
    code, problem = call(base, "POST", "/v1/domains/newdomain/datasets", body,
                         content_type=content_type)
    assert code == status and problem["code"] == "invalid_input" and problem["detail"]
    assert call(base, "GET", "/v1/domains")[1] == before
    assert os.listdir(os.path.join(data_dir, "uploads")) == []
