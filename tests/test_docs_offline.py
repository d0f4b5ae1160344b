"""/docs and /redoc without internet: their scripts come from the daemon itself (the
fastapi-offline wheel), a headless browser with no network renders every operation, and no
page of the daemon can be framed."""
import json
import re
import time
import urllib.request
from html.parser import HTMLParser

import live_daemon
import pytest
from browser import loaded_from, open_browser, webdriver_or_skip

pytest.importorskip("fastapi")
TOKEN = "docs-token"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    proc, base = live_daemon.start(str(tmp_path_factory.mktemp("docs")), TOKEN)
    yield base
    live_daemon.stop(proc)


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return response.status, response.headers, response.read()


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_docs_pages_load_nothing_from_another_origin(daemon):
    for page in ("/docs", "/redoc"):
        status, headers, body = get(daemon, page)
        html = body.decode()
        parser = _References()
        parser.feed(html)
        assert status == 200 and parser.urls, page
        assert not re.search(r"https?://", html), page  # no CDN, not even in inline scripts
        for url in parser.urls:
            assert url.startswith("/"), (page, url)
            asset_status, _, asset = get(daemon, url)
            assert asset_status == 200 and len(asset) > 1000, url
        policy = headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("path", ["/dashboard", "/docs", "/redoc", "/healthz", "/openapi.json",
                                  "/docs-assets/swagger-ui.css", "/v1/domains"])
def test_no_page_of_the_daemon_can_be_framed(daemon, path):
    request = urllib.request.Request(daemon + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=30) as response:
        headers = response.headers
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_the_dashboard_keeps_its_own_policy_beside_the_framing_rule(daemon):
    policy = get(daemon, "/dashboard")[1]["Content-Security-Policy"]
    assert policy.startswith("default-src 'self'") and policy.endswith("frame-ancestors 'none'")


def _wait_for(browser, script, timeout=60):
    deadline = time.time() + timeout
    value = None
    while time.time() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.3)
    return value


def assert_nothing_left_the_daemon(browser, daemon) -> None:
    """Every URL the page asked for is the daemon's, or the page's own policy blocked it
    before it reached the network (ReDoc always tries its logo from its vendor's CDN)."""
    blocked = " ".join(entry["message"] for entry in browser.get_log("browser")
                       if "Content Security Policy" in entry["message"])
    outside = [url for url in loaded_from(browser) if not url.startswith(daemon + "/")]
    assert all(url in blocked for url in outside), (outside, blocked)


def test_the_docs_render_every_operation_in_a_browser_without_network(daemon):
    webdriver = webdriver_or_skip()
    schema = json.loads(get(daemon, "/openapi.json")[2])
    operations = {(method.upper(), path) for path, item in schema["paths"].items()
                  for method in item}
    browser = open_browser(webdriver, offline=True)
    try:
        browser.get(daemon + "/docs")
        shown = _wait_for(browser, "return Array.from(document.querySelectorAll('.opblock'))"
                          ".map(b => [b.querySelector('.opblock-summary-method').textContent,"
                          " b.querySelector('.opblock-summary-path').dataset.path])")
        assert {tuple(pair) for pair in shown or []} == operations
        assert_nothing_left_the_daemon(browser, daemon)

        browser.get(daemon + "/redoc")
        count = _wait_for(browser, "return new Set(Array.from(document.querySelectorAll("
                          "'[data-section-id^=\"operation/\"]')).map(e => e.dataset.sectionId))"
                          ".size")
        assert count == len(operations)
        assert_nothing_left_the_daemon(browser, daemon)
    finally:
        browser.quit()
