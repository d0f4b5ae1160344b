"""The review page in a real browser (headless Chromium, as tests/test_dashboard.py): the
queued predictions show as thumbnails with their top-3, one click labels one (it leaves the
queue and reaches the domain's samples), another discards one. REVIEW_SCREENSHOT=path saves
the page with its queue (the README's docs/review-page.png)."""
import io
import os
import time

import live_daemon
import pytest
from api_calls import TOKEN, call, train
from browser import loaded_from, open_browser, webdriver_or_skip
from PIL import Image
from review_calls import predict, queue, settle, working_set

pytest.importorskip("fastapi")  # a live daemon: not on the torch-only 3.6 stage
webdriver = webdriver_or_skip(module_level=True)
DOMAIN = "colours"
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 220)}


def swatch(rgb, seed, size=96):
    """A diagonal blend of a colour into grey, more grey with each seed: an image the
    untrained model is unsure of, and thumbnails one can tell apart."""
    image = Image.new("RGB", (size, size))
    pixels = image.load()
    for y in range(size):
        for x in range(size):
            mix = (x + y) / (2.0 * size) * (0.3 + 0.12 * seed)
            pixels[x, y] = tuple(int(c * (1 - mix) + 128 * mix) for c in rgb)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("review-page"))
    proc, base = live_daemon.start(data_dir, TOKEN)
    yield base, data_dir
    live_daemon.stop(proc)


@pytest.fixture
def browser():
    session = open_browser(webdriver, offline=True, size="1300,900")
    yield session
    session.quit()


def _cards(browser):
    return browser.find_elements("css selector", "#queue .item")


def _ids(browser):
    """The queued items' ids as the page shows them (read in one go: the page may redraw)."""
    return browser.execute_script("return Array.from(document.querySelectorAll("
                                  "'#queue .item')).map(c => Number(c.dataset.id))")


def _wait(condition, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("the page did not get there in %ds" % timeout)


def test_one_click_labels_a_queued_prediction(daemon, tmp_path, browser):
    base, data_dir = daemon
    folder = tmp_path / "colours"
    for name, rgb in COLOURS.items():
        os.makedirs(str(folder / name))
        for i in range(6):
            Image.new("RGB", (24, 24), tuple(max(0, c - 8 * i) for c in rgb)).save(
                str(folder / name / ("%d.png" % i)))
    assert train(base, DOMAIN, str(folder))["state"] == "succeeded"
    assert call(base, "PUT", "/v1/domains/%s/review/settings" % DOMAIN,
                {"enabled": True, "threshold": 1.0})[0] == 200
    images = [swatch(rgb, seed) for seed, rgb in enumerate(list(COLOURS.values()) * 2)]
    predict(base, images, DOMAIN)
    page = settle(base, len(images), DOMAIN)

    browser.get(base + "/review")
    assert browser.find_element("id", "login").is_displayed()
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#login button").click()
    cards = _wait(lambda: len(_cards(browser)) == len(images) and _cards(browser))
    assert _ids(browser) == [i["id"] for i in page["items"]]
    loaded = "return Array.from(document.querySelectorAll('#queue img'))" \
             ".filter(i => i.complete && i.naturalWidth === 96).length"
    _wait(lambda: browser.execute_script(loaded) == len(images))
    for card, item in zip(cards, page["items"]):
        lines = [li.text for li in card.find_elements("css selector", "ol li")]
        assert [line.split() for line in lines] == [
            [p["class"], "%.1f" % (100 * p["probability"]), "%"] for p in item["predictions"]]
        buttons = [b.get_attribute("data-label")
                   for b in card.find_elements("css selector", "button.label")]
        assert sorted(buttons) == sorted(COLOURS)
        assert card.find_element("css selector", "button.discard").is_displayed()
    assert all(url.startswith(base) or url.startswith("blob:") for url in loaded_from(browser))
    shot = os.environ.get("REVIEW_SCREENSHOT") or str(tmp_path / "review.png")
    assert browser.save_screenshot(shot) and os.path.getsize(shot) > 10000

    first, second = page["items"][0], page["items"][1]
    samples = working_set(data_dir, DOMAIN)
    cards[0].find_element("css selector", "button.label[data-label='green']").click()
    _wait(lambda: first["id"] not in _ids(browser))
    after = queue(base, DOMAIN)
    assert first["id"] not in [i["id"] for i in after["items"]]
    assert after["count"] == len(images) - 1
    added = set(working_set(data_dir, DOMAIN).items()) - set(samples.items())
    assert len(added) == 1 and list(added)[0][1] == ("green", "review")
    assert "green" in browser.find_element("id", "message").text

    card = browser.find_element("css selector", "#queue .item[data-id='%d']" % second["id"])
    card.find_element("css selector", "button.discard").click()
    _wait(lambda: second["id"] not in _ids(browser))
    assert queue(base, DOMAIN)["count"] == len(images) - 2
    assert len(working_set(data_dir, DOMAIN)) == len(samples) + 1  # a discard adds nothing

    third = queue(base, DOMAIN)["items"][0]  # the free label field takes a new class
    card = browser.find_element("css selector", "#queue .item[data-id='%d']" % third["id"])
    card.find_element("css selector", ".free input").send_keys("purple")
    card.find_element("css selector", ".free button").click()
    _wait(lambda: third["id"] not in _ids(browser))
    assert ("purple", "review") in working_set(data_dir, DOMAIN).values()
