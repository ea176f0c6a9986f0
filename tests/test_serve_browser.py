"""End to end: the service on 127.0.0.1, the page in headless Chromium, an upload through the file input."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from surfad import bundle
from surfad.calibrate import Calibration
from surfad.detector import Detector
from surfad.serve.app import create_app
from surfad.serve.record import LOG, InspectionLog

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
KEY = "browser-key"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (Debian packages chromium, chromium-driver; "
           "`make test` installs them)",
)


@pytest.fixture(scope="module")
def detector(tiny_run) -> Detector:
    return Detector.load(tiny_run(), runtime="onnx")


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("record")


@contextmanager
def serving(app) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, in a background thread, for the block; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def url(detector: Detector, record_dir: Path) -> Iterator[str]:
    """The service with an API key and recording."""
    with serving(create_app(detector, api_key=KEY, record=InspectionLog(record_dir, keep_images="none"))) as address:
        yield address


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def wait_for(browser, condition, seconds: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, seconds).until(condition)


def test_upload_shows_the_verdict(browser, url: str, detector: Detector, tiny_mvtec: Path, record_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    image = sorted((tiny_mvtec / "test").glob("[!g]*/*.png"))[0]
    expected = detector.predict(image)
    browser.get(url)
    # No key stored yet: the page asks for one, then keeps it in localStorage.
    wait_for(browser, lambda b: b.find_element(By.ID, "keybar").is_displayed())
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "key-save").click()
    wait_for(browser, lambda b: "unet_vae" in b.find_element(By.ID, "model-info").text)
    assert browser.execute_script("return localStorage.getItem('surfad.apiKey')") == KEY

    browser.find_element(By.ID, "file-input").send_keys(str(image.resolve()))
    verdict = wait_for(browser, lambda b: b.find_element(By.ID, "verdict").text in ("OK", "NG")
                       and b.find_element(By.ID, "verdict").text)
    assert verdict == expected.verdict
    assert float(browser.find_element(By.ID, "score").text) == pytest.approx(expected.score, rel=1e-3)
    assert float(browser.find_element(By.ID, "threshold").text) == pytest.approx(detector.threshold, rel=1e-3)
    assert browser.find_element(By.ID, "view").get_attribute("src").startswith("data:image/png;base64,")
    rows = browser.find_elements(By.CSS_SELECTOR, "#regions tbody tr")
    assert len(rows) == len(expected.regions)
    assert not browser.find_element(By.ID, "error").is_displayed()
    logged = json.loads((record_dir / LOG).read_text().splitlines()[-1])  # the inspector sees the record's id
    assert browser.find_element(By.ID, "record").text == logged["id"][:12]


def test_bad_upload_shows_the_error(browser, url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    fake = tmp_path / "fake.png"
    fake.write_text("not really a png")
    browser.get(url)
    browser.execute_script("localStorage.setItem('surfad.apiKey', arguments[0])", KEY)
    browser.refresh()
    wait_for(browser, lambda b: "unet_vae" in b.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "file-input").send_keys(str(fake))
    error = wait_for(browser, lambda b: b.find_element(By.ID, "error").is_displayed() and b.find_element(By.ID, "error").text)
    assert "fake.png" in error and "not a readable image" in error


def test_a_score_in_the_review_band_shows_review(browser, tiny_run, tiny_mvtec: Path, tmp_path: Path) -> None:
    """Broken: the page knowing only OK and NG (a REVIEW answer shown as OK, or as nothing)."""
    from selenium.webdriver.common.by import By

    run = Path(shutil.copytree(tiny_run(), tmp_path / "run"))
    image = sorted((tiny_mvtec / "test").glob("[!g]*/*.png"))[0]
    score = Detector.load(run).predict(image).score
    calibration = Calibration.load(run / bundle.CALIBRATION)
    calibration.review = [score - 1.0, score + 1.0]
    calibration.save(run / bundle.CALIBRATION)
    with serving(create_app(Detector.load(run, runtime="onnx"))) as address:
        browser.get(address)
        browser.find_element(By.ID, "file-input").send_keys(str(image.resolve()))
        verdict = wait_for(browser, lambda b: b.find_element(By.ID, "verdict").text in ("OK", "REVIEW", "NG")
                           and b.find_element(By.ID, "verdict"))
        assert verdict.text == "REVIEW" and "review" in verdict.get_attribute("class")
        assert "for a person to decide" in browser.find_element(By.ID, "verdict-note").text
