"""Calls the review-queue tests share (tests/test_api_review.py, tests/test_review_page.py):
doubtful test images, predictions, the queue and the working set as the store holds it."""
import contextlib
import io
import os
import sqlite3
import time

from api_calls import call, multipart, wait_for
from PIL import Image


def noise_png(seed, size=24):
    """A PNG of seeded noise: distinct per seed, about the same size for every seed."""
    import numpy as np

    pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3)).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def predict(base, images, domain, top_k=3):
    body, content_type = multipart([("file", ("%d.png" % i, blob))
                                    for i, blob in enumerate(images)])
    status, answer = call(base, "POST", "/v1/domains/%s/predict?top_k=%d" % (domain, top_k),
                          body, content_type=content_type)
    assert status == 200, answer
    return answer


def queue(base, domain, query=""):
    status, page = call(base, "GET", "/v1/domains/%s/review%s" % (domain, query))
    assert status == 200, page
    return page


def kept_when_idle(base, domain, quiet=1.0, timeout=60):
    """The keeper's ``kept`` count once it has stopped moving for ``quiet`` seconds: an
    earlier test's offer may still be written (the keeper is behind under load)."""
    deadline = time.time() + timeout
    last = queue(base, domain)["counters"]["kept"]
    while time.time() < deadline:
        time.sleep(quiet)
        now = queue(base, domain)["counters"]["kept"]
        if now == last:
            return now
        last = now
    raise AssertionError("the review keeper never went quiet")


def settle(base, count, domain):
    """The queue once the keeper has written ``count`` items in all since the start."""
    page = wait_for(lambda: queue(base, domain), lambda p: p["counters"]["kept"] >= count)
    assert page["counters"]["kept"] == count, page["counters"]
    return page


def working_set(data_dir, domain):
    """{content hash: (label, source)} of the domain's samples, read from the store."""
    uri = "file:%s?mode=ro" % os.path.join(data_dir, "agent.db")
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute("SELECT hash, label, source FROM samples WHERE domain = ?",
                          (domain,)).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


