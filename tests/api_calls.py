"""Calls to a live daemon, shared by the API tests (tests/test_api_*.py) and the other tests
that talk to one: the test token, JSON and multipart requests, test images and archives, and
waiting for a job. The ``server`` fixture (tests/conftest.py) starts a daemon with this token."""
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "test-token-" + uuid.uuid4().hex
UPLOAD_LIMIT_MB = 1
REPLAY = os.path.join(ROOT, "deploy", "replay", "nano-training.log")


def call(base, method, path, body=None, token=TOKEN, content_type="application/json"):
    headers = {"Content-Type": content_type} if body is not None else {}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def fetch(base, path, token=TOKEN):
    """(status, content type, body bytes) of a GET."""
    headers = {"Authorization": "Bearer " + token} if token else {}
    request = urllib.request.Request(base + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def multipart(files):
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data) in files:
        parts.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n" % (boundary, name, filename)
                      ).encode() + data + b"\r\n")
    body = b"".join(parts) + ("--%s--\r\n" % boundary).encode()
    return body, "multipart/form-data; boundary=" + boundary


def png(rgb):
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), rgb).save(buffer, "PNG")
    return buffer.getvalue()


def zipped(folder):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for directory, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(directory, name)
                archive.write(path, os.path.relpath(path, folder))
    return buffer.getvalue()


def wait_for(fetch, ok, timeout=30):
    deadline = time.time() + timeout
    while True:
        value = fetch()
        if ok(value) or time.time() > deadline:
            return value
        time.sleep(0.2)


def wait_for_job(base, job_id, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, record = call(base, "GET", "/v1/jobs/" + job_id)
        assert status == 200, record
        if record["state"] in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.3)
    raise AssertionError("job %s did not finish" % job_id)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "device_agent"] + list(args), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=300)


def download(base, path):
    request = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "application/zip"
        return response.read()


def zip_of(files):
    """A zip of ``{name: bytes}``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(base, domain, folder):
    """POST ``folder`` (an ImageFolder) as a zip to the domain's datasets; (status, body)."""
    body, content_type = multipart([("file", ("%s.zip" % domain, zipped(folder)))])
    return call(base, "POST", "/v1/domains/%s/datasets" % domain, body,
                content_type=content_type)


def train(base, domain, folder, **params):
    """Upload ``folder`` to ``domain`` and train it to the end (a small, quick job unless
    ``params`` say otherwise); the finished job's record."""
    status, summary = upload(base, domain, folder)
    assert status == 201, summary
    job = dict({"backbone": "resnet18", "epochs": 1, "batch_size": 4, "resolution": 32},
               **params)
    status, created = call(base, "POST", "/v1/domains/%s/jobs" % domain, job)
    assert status == 202, created
    return wait_for_job(base, created["job_id"])


# --- the data loop (issue 14) -------------------------------------------------------------

def form(files, fields=()):
    """A multipart body of ``files`` [(name, (filename, bytes))] and plain ``fields``
    [(name, text)], in that order; (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
              "Content-Type: application/octet-stream\r\n\r\n" % (boundary, name, filename)
              ).encode() + data + b"\r\n" for name, (filename, data) in files]
    parts += [("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n" % (boundary, name)
               ).encode() + text.encode("utf-8") + b"\r\n" for name, text in fields]
    body = b"".join(parts) + ("--%s--\r\n" % boundary).encode()
    return body, "multipart/form-data; boundary=" + boundary


def add_samples(base, domain, images, labels, relabel=False, token=TOKEN):
    """POST images (bytes) with their label(s) to the domain's samples; (status, body)."""
    body, content_type = form([("file", ("%d.png" % i, data)) for i, data in enumerate(images)],
                              [("label", label) for label in labels])
    return call(base, "POST", "/v1/domains/%s/samples%s" % (domain, "?relabel=true" if relabel
                                                               else ""),
                body, token=token, content_type=content_type)
