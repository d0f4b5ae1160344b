"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium) against a running daemon fed by the replay source, and against one on
this machine's own telemetry (no GPU, no power rails). Saves screenshots before and after
login (DASHBOARD_SCREENSHOT=docs/dashboard.png writes docs/dashboard-login.png beside it)."""
import os
import re
import time

import live_daemon
import pytest
from api_calls import TOKEN, call, multipart, wait_for_job, zipped
from browser import open_browser, webdriver_or_skip
from test_api_class_results import HOSTILE

pytest.importorskip("fastapi")  # a live daemon: not on the torch-only 3.6 stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPLAY = os.path.join(ROOT, "deploy", "replay", "nano-training.log")
webdriver = webdriver_or_skip(module_level=True)
TIME_CHARTS = ("chart-memory", "chart-gpu", "chart-power", "chart-temps")
# Every tick label of every chart lies inside its chart (the last x label used to be cut).
LABELS_OUTSIDE = """
  const outside = [];
  for (const svg of document.querySelectorAll("svg")) {
    const width = svg.viewBox.baseVal.width;
    for (const text of svg.querySelectorAll("text.tick")) {
      const box = text.getBBox();
      if (box.x < 0 || box.x + box.width > width + 0.5) {
        outside.push(svg.id + ": " + text.textContent);
      }
    }
  }
  return outside;"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    proc, base = live_daemon.start(str(tmp_path_factory.mktemp("dashboard")), TOKEN,
                                   DEVICE_AGENT_TELEMETRY_SOURCE="replay",
                                   DEVICE_AGENT_TELEMETRY_REPLAY=REPLAY,
                                   DEVICE_AGENT_TELEMETRY_INTERVAL_S="0.1")
    yield base
    live_daemon.stop(proc)


@pytest.fixture
def browser():
    session = open_browser(webdriver)
    yield session
    session.quit()


def _train(base, folder, domain, method):
    body, content_type = multipart([("file", ("d.zip", zipped(folder)))])
    assert call(base, "POST", "/v1/domains/%s/datasets" % domain, body,
                content_type=content_type)[0] == 201
    status, job = call(base, "POST", "/v1/domains/%s/jobs" % domain,
                       {"backbone": "resnet18", "epochs": 2, "resolution": 32, "method": method})
    assert status == 202
    assert wait_for_job(base, job["job_id"])["state"] == "succeeded"


def _log_in(browser, base):
    browser.get(base + "/dashboard")
    assert browser.find_element("id", "login").is_displayed()  # no token yet
    assert not browser.find_element("id", "board").is_displayed()  # no empty chart frames
    assert "token" in browser.find_element("id", "status").text
    shot = os.environ.get("DASHBOARD_SCREENSHOT")
    if shot:
        login_shot = os.path.splitext(shot)[0] + "-login.png"
        assert browser.save_screenshot(login_shot) and os.path.getsize(login_shot) > 5000
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#login button").click()


def _points(browser, charts, until, timeout=60):
    points = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        points = {chart: int(browser.find_element("id", chart).get_attribute("data-points")
                             or 0) for chart in charts}
        if until(points):
            break
        time.sleep(0.5)
    return points


def test_the_dashboard_draws_live_charts(daemon, small_folder, tmp_path, browser):
    _train(daemon, small_folder, "colours", "da2")
    _train(daemon, small_folder, "colours-last", "last")
    _log_in(browser, daemon)
    points = _points(browser, TIME_CHARTS + ("chart-methods",),
                     lambda p: all(p.values()) and p["chart-memory"] > 30)
    assert all(points.values()), points
    lines = browser.find_elements("css selector", "#chart-memory polyline.series")
    assert len(lines) == 3  # RAM, swap, worker RSS
    rows = browser.find_elements("css selector", "#domains tbody tr")
    assert sorted(r.get_attribute("data-domain") for r in rows) == ["colours", "colours-last"]
    for row in rows:  # the last job's threads in use / the CPU share they got
        threads = row.find_elements("css selector", "td")[9].text
        assert re.match(r"^\d+ / \d+\.\d\d$", threads), threads
    assert "replay" in browser.find_element("id", "status").text
    markers = browser.find_elements("css selector", "#chart-memory line[stroke-dasharray]")
    assert len(markers) >= 2  # job start and end
    assert len(browser.find_elements("css selector", "#chart-methods circle.point")) == 2
    assert browser.execute_script(LABELS_OUTSIDE) == []
    _check_heatmap(browser, daemon, "colours-last")  # the latest job's domain by default
    _pick(browser, "colours")
    _check_heatmap(browser, daemon, "colours")
    shot = os.environ.get("DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png")
    assert browser.save_screenshot(shot) and os.path.getsize(shot) > 10000
    browser.find_element("id", "logout").click()  # forgetting the token locks the page
    assert browser.find_element("id", "login").is_displayed()
    assert not browser.find_element("id", "board").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0


def test_panels_say_why_a_machine_without_the_sensors_has_no_data(tmp_path, browser):
    proc, base = live_daemon.start(str(tmp_path / "data"), TOKEN,
                                   DEVICE_AGENT_TELEMETRY_SOURCE="linux",
                                   DEVICE_AGENT_TELEMETRY_INTERVAL_S="0.2")
    try:
        browser.get(base + "/dashboard")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("css selector", "#login button").click()
        points = _points(browser, ("chart-memory",), lambda p: p["chart-memory"] > 3)
        assert points["chart-memory"] > 3
        for chart in ("chart-gpu", "chart-power"):  # the linux source has neither
            svg = browser.find_element("id", chart)
            assert svg.get_attribute("data-points") == "0"
            assert "absent" in svg.get_attribute("class")
            note = svg.find_element("css selector", "text.empty-note").text
            assert "source linux" in note and "reports no" in note, note
        assert browser.execute_script(LABELS_OUTSIDE) == []
    finally:
        live_daemon.stop(proc)


# --- per-class results (issue 14): the confusion-matrix heatmap ---------------------------

HEATMAP = """
  const cells = [...document.querySelectorAll("#confusion rect.cell")].map(r => [
    +r.dataset.true, +r.dataset.predicted, +r.dataset.count]);
  const counts = [...document.querySelectorAll("#confusion text.count")].map(t => t.textContent);
  const labels = sel => [...document.querySelectorAll("#confusion g." + sel)].map(g => [
    g.querySelector("title").textContent, g.querySelector("text").textContent]);
  return {cells, counts, rows: labels("row-label"), columns: labels("column-label"),
          pairs: [...document.querySelectorAll("#confused-pairs li")].map(li => li.textContent),
          figures: [...document.querySelectorAll("#class-figures tbody tr")].map(
            tr => tr.cells[0].textContent),
          note: document.getElementById("class-note").textContent,
          images: document.querySelectorAll("img").length};"""


def _pick(browser, domain):
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "class-domain")).select_by_value(domain)


def _shown(browser, domain, timeout=30):
    """The heatmap once the page shows ``domain``'s matrix (it redraws every poll)."""
    deadline = time.time() + timeout
    while True:
        shown = browser.execute_script(HEATMAP)
        if (" of %s:" % domain) in shown["note"] and shown["cells"] or time.time() > deadline:
            return shown
        time.sleep(0.3)


def _check_heatmap(browser, base, domain):
    results = call(base, "GET", "/v1/domains/" + domain)[1]["class_results"]
    classes, matrix = results["classes"], results["matrix"]
    shown = _shown(browser, domain)
    assert len(shown["cells"]) == len(classes) ** 2  # one cell per (true, predicted) pair
    assert sorted(shown["cells"]) == [[t, p, matrix[t][p]] for t in range(len(classes))
                                      for p in range(len(classes))]
    assert sorted(shown["counts"]) == sorted(str(c) for row in matrix for c in row if c)
    assert [full for full, _ in shown["rows"]] == classes == [f for f, _ in shown["columns"]]
    for full, short in shown["rows"]:  # long names are cut, the whole name in the tooltip
        assert short == (full if len(full) <= 14 else full[:13] + "…")
    expected = ["%s → %s: %d" % (p["true"], p["predicted"], p["count"])
                for p in results["most_confused"]]
    assert shown["pairs"] == (expected or ["no image was taken for another class"])
    assert shown["figures"] == classes
    assert "%d of %d" % (results["correct"], results["total"]) in shown["note"]
    return shown


def test_hostile_class_names_are_shown_as_text(daemon, tmp_path, browser):
    """Markup, quotes and braces in class names are text on the page, never markup."""
    from test_api_class_results import _folder

    names = HOSTILE + ["a-very-long-class-name-that-is-cut-short"]
    _train(daemon, _folder(str(tmp_path / "hostile"), names), "hostile", "last")
    _log_in(browser, daemon)
    _points(browser, ("chart-memory",), lambda p: p["chart-memory"] > 0)
    _pick(browser, "hostile")
    shown = _check_heatmap(browser, daemon, "hostile")
    assert sorted(full for full, _ in shown["rows"]) == sorted(names)
    assert shown["images"] == 0  # '<img src=x onerror=...>' stayed a name
    assert browser.execute_script(LABELS_OUTSIDE) == []
    shot = os.environ.get("DASHBOARD_CONFUSION_SCREENSHOT")
    if shot:  # the heatmap section alone, for the README
        section = browser.find_element("id", "class-results")
        assert section.screenshot(shot) and os.path.getsize(shot) > 5000
