"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium) against a running daemon fed by the replay source. Saves a screenshot."""
import os
import shutil
import time

import live_daemon
import pytest
from test_api import TOKEN, call, multipart, wait_for_job, zipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPLAY = os.path.join(ROOT, "deploy", "replay", "nano-training.log")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
IN_CI = os.environ.get("CI") == "true"

if not (CHROMIUM and DRIVER) or not os.path.exists(REPLAY):
    if IN_CI:  # CI installs them (scripts/install-browser.sh): missing there is a failure
        raise RuntimeError("chromium and chromium-driver are required in CI")
    pytest.skip("chromium / chromium-driver not installed", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    proc, base = live_daemon.start(str(tmp_path_factory.mktemp("dashboard")), TOKEN,
                                   DEVICE_AGENT_TELEMETRY_SOURCE="replay",
                                   DEVICE_AGENT_TELEMETRY_REPLAY=REPLAY,
                                   DEVICE_AGENT_TELEMETRY_INTERVAL_S="0.1")
    yield base
    live_daemon.stop(proc)


def _train(base, folder, domain, method):
    body, content_type = multipart([("file", ("d.zip", zipped(folder)))])
    assert call(base, "POST", "/v1/domains/%s/datasets" % domain, body,
                content_type=content_type)[0] == 201
    status, job = call(base, "POST", "/v1/domains/%s/jobs" % domain,
                       {"backbone": "resnet18", "epochs": 2, "resolution": 32, "method": method})
    assert status == 202
    assert wait_for_job(base, job["job_id"])["state"] == "succeeded"


def test_the_dashboard_draws_live_charts(daemon, small_folder, tmp_path):
    _train(daemon, small_folder, "colours", "da2")
    _train(daemon, small_folder, "colours-last", "last")
    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1250"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    browser = webdriver.Chrome(options=options,
                               service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        browser.get(daemon + "/dashboard")
        assert browser.find_element("id", "login").is_displayed()  # no token yet
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("css selector", "#login button").click()
        points = {}
        deadline = time.time() + 60
        while time.time() < deadline:
            points = {chart: int(browser.find_element("id", chart).get_attribute("data-points")
                                 or 0)
                      for chart in ("chart-memory", "chart-gpu", "chart-power", "chart-temps",
                                    "chart-methods")}
            if all(points.values()) and points["chart-memory"] > 30:
                break
            time.sleep(0.5)
        assert all(points.values()), points
        lines = browser.find_elements("css selector", "#chart-memory polyline.series")
        assert len(lines) == 3  # RAM, swap, worker RSS
        rows = browser.find_elements("css selector", "#domains tbody tr")
        assert sorted(r.get_attribute("data-domain") for r in rows) == ["colours", "colours-last"]
        assert "replay" in browser.find_element("id", "status").text
        markers = browser.find_elements("css selector", "#chart-memory line[stroke-dasharray]")
        assert len(markers) >= 2  # job start and end
        assert len(browser.find_elements("css selector", "#chart-methods circle.point")) == 2
        shot = os.environ.get("DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png")
        assert browser.save_screenshot(shot) and os.path.getsize(shot) > 10000
        browser.find_element("id", "logout").click()  # forgetting the token locks the page
        assert browser.find_element("id", "login").is_displayed()
        assert browser.execute_script("return sessionStorage.length") == 0
    finally:
        browser.quit()
