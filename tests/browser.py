"""Headless Chromium for the browser tests: Debian's chromium and chromium-driver, driven by
Selenium (scripts/install-browser.sh installs them). Found, or the test is skipped -- except
in CI, where a missing browser is a failure unless skipping was asked for."""
import os
import shutil

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SKIP_ENV = "DEVICE_AGENT_SKIP_BROWSER"  # set by scripts/test.sh --no-browser
# Only loopback answers: a dead proxy for every other address, no name resolves but
# 127.0.0.1. A page that needs anything from outside the daemon fails as on a board with
# no uplink.
OFFLINE_FLAGS = ("--proxy-server=http://127.0.0.1:9",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")


def webdriver_or_skip(module_level: bool = False):
    """Selenium's webdriver module once the browser is known to be there."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip("%s=1 (scripts/test.sh --no-browser): no browser tests" % SKIP_ENV,
                    allow_module_level=module_level)
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI") == "true":  # CI installs them: missing there is a failure
            raise RuntimeError("chromium and chromium-driver are required in CI "
                               "(scripts/install-browser.sh)")
        pytest.skip("chromium / chromium-driver not installed (scripts/install-browser.sh)",
                    allow_module_level=module_level)
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium not installed (the 'browser' extra)",
                    allow_module_level=module_level)
    return webdriver


def open_browser(webdriver, offline: bool = False, size: str = "1400,1250"):
    """A headless Chromium session; ``offline``: it reaches nothing but loopback."""
    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=" + size) + (
            OFFLINE_FLAGS if offline else ()):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(options=options,
                            service=webdriver.ChromeService(executable_path=DRIVER))


def loaded_from(browser) -> list:
    """Every URL the current page fetched (the page itself and its resources)."""
    return browser.execute_script(
        "return [location.href].concat(performance.getEntriesByType('resource')"
        ".map(function (e) { return e.name; }))")
