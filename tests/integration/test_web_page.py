"""The try-it page (`GET /`, `GET /ui`) in headless Chromium against a real Serve app on 127.0.0.1.

Debian's `chromium` and `chromium-driver` (the Makefile installs them), driven by Selenium through the
system chromedriver, so Selenium Manager never downloads a browser or driver. The page posts a document to
online LIFT with the tiny LIFT config of `test_online_lift.py` (8 epochs), shows its status until published, asks
the adapter and the base model the same question. `LIFT_RAY_WEB_SCREENSHOT=docs/images/web_page.png` also
writes the final screenshot there (the one in the docs comes from such a run).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from lift_ray.client import wait_until_healthy
from lift_ray.config import OnlineLiftSettings, ServeConfig, StorageSettings, TenantSettings
from testkit.chat_stub import ChatStub, serving

from .test_online_lift import LIFT_CONFIG, PUBLISH_TIMEOUT_S
from .test_serve import call

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # root on CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
]
SCREENSHOT_ENV = "LIFT_RAY_WEB_SCREENSHOT"
APP, ROUTE = "lift-web", "/web"
KEY, NAMESPACE = "web-key-4b7", "web"
DOC_ID = "quell-bridge"
DOCUMENT = "The Quell bridge over the river Sarn opened in 1903. Its engineer was Mara Lind of Tovik."
QUESTION = "Who was the engineer of the Quell bridge?"
# test_online_lift's tiny LIFT, with more and larger steps on its few pairs (seconds) so that the adapter's
# answer in the screenshot has a chance to differ from the base model's; the test does not require it to.
# Online runs publish a draft after the first epoch (online_lift.draft_after_epochs), which the page shows.
TRAIN = {**LIFT_CONFIG["train"], "epochs": 8, "learning_rate": 3e-3}
# The page is under test, not the generator: a stand-in that answers at once with a pair about the document
# (testkit.chat_stub, an OpenAI-compatible server on loopback) instead of minutes of CPU generation.
STUB_PAIRS = '[{"question": "Who was the engineer of the Quell bridge?", "answer": "Mara Lind of Tovik"}]'
UI_WAIT_S = 120  # page loads, model lists and answers (two generations on a busy 2-core machine)


@pytest.fixture(scope="module")
def endpoint(serve_url, s3_store_root, embedded_model_dir, tmp_path_factory) -> Iterator[str]:
    """An app on the running Serve proxy with one tenant and online LIFT on (tiny LIFT config, no batch window)."""
    folder = tmp_path_factory.mktemp("web-page")
    with serving() as start:
        generator = {
            **LIFT_CONFIG["generator"],
            "engine": "openai",
            "openai": {"base_url": start(ChatStub(reply=STUB_PAIRS))},
        }
        lift = {**LIFT_CONFIG, "generator": generator, "train": TRAIN, "work_dir": str(folder / "work")}
        lift_yaml = folder / "lift.yaml"
        lift_yaml.write_text(yaml.safe_dump(lift))
        yield from _app(serve_url, s3_store_root, folder, lift_yaml)


def _app(serve_url: str, s3_store_root: str, folder: Path, lift_yaml: Path) -> Iterator[str]:
    from ray import serve

    from serve.app import build_app

    config = ServeConfig(
        storage=StorageSettings(root=s3_store_root, namespace=NAMESPACE),
        adapter_cache_dir=folder / "adapter-cache",
        num_cpus_per_replica=0.3,
        torch_threads=1,
        max_new_tokens=24,
        tenants=TenantSettings(api_keys={NAMESPACE: [KEY]}, api_keys_env=None),
        # The cold path (a Ray task running lift_documents per batch): test_online_lift covers warm workers.
        online_lift=OnlineLiftSettings(
            enabled=True, config=lift_yaml, batch_window_s=0, max_document_bytes=4096, warm_workers=False
        ),
    )
    serve.run(build_app(config), name=APP, route_prefix=ROUTE, blocking=False)
    url = serve_url + ROUTE
    wait_until_healthy(url, timeout=300)
    yield url
    serve.delete(APP)  # frees its CPUs for the tests that follow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile; fails (does not skip) when Chromium is not installed."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver (make install does)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def wait_for(driver: WebDriver, condition, timeout: float = UI_WAIT_S, what: str = "") -> object:
    """`condition(driver)` once truthy; the failure names what did not happen and what the page says."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except Exception as exc:
        page = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{what or condition} did not happen in {timeout} s; the page says:\n{page}") from exc


def full_page_png(driver: WebDriver) -> bytes:
    """A screenshot of the whole page, not only the window (Chromium's DevTools protocol)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    return base64.b64decode(shot["data"])


def test_the_page_is_html_and_says_when_online_lift_is_off(serve_url, browser):
    for path in ("/", "/ui"):
        with urllib.request.urlopen(serve_url + path, timeout=60) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert b"/v1/chat/completions" in response.read()
    browser.get(serve_url + "/")  # the session's app: no keys, online LIFT off
    assert browser.find_element(By.ID, "online-off").is_displayed()
    assert not browser.find_element(By.ID, "document-form").is_displayed()
    browser.find_element(By.ID, "connect").click()  # asking published documents still works without LIFT
    wait_for(browser, lambda d: text_of(d, "key-message").startswith("Connected"), what="listing the models")


def test_post_watch_and_ask_through_the_page(endpoint, browser, tmp_path):
    started = time.monotonic()
    browser.get(endpoint + "/ui")
    assert not browser.find_element(By.ID, "online-off").is_displayed()
    browser.find_element(By.ID, "connect").click()  # no key yet: the page says the endpoint refused it
    wait_for(browser, lambda d: "401" in text_of(d, "key-message"), what="a 401 shown")
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "connect").click()
    wait_for(browser, lambda d: text_of(d, "key-message").startswith("Connected: 0"), what="connecting")

    # Upload fills the text and the id from the file name; then the text is replaced by typing (a paste).
    upload = tmp_path / f"{DOC_ID}.txt"
    upload.write_text("Uploaded text.")
    browser.find_element(By.ID, "doc-file").send_keys(str(upload))
    text_area = browser.find_element(By.ID, "doc-text")
    wait_for(browser, lambda d: text_area.get_attribute("value") == "Uploaded text.", what="reading the file")
    assert browser.find_element(By.ID, "doc-id").get_attribute("value") == DOC_ID
    text_area.clear()
    text_area.send_keys(DOCUMENT)
    browser.find_element(By.ID, "submit-doc").click()

    final = wait_for(
        browser,
        lambda d: text_of(d, "doc-status") in ("published", "failed") and text_of(d, "doc-status"),
        timeout=PUBLISH_TIMEOUT_S,
        what="the document published",
    )
    seen = [item.get_attribute("data-status") for item in browser.find_elements(By.CSS_SELECTOR, "#status-history li")]
    assert final == "published", f"{final}: {text_of(browser, 'status-error')}"
    assert seen[0] == "queued" and seen[-1] == "published", seen
    assert set(seen) <= {"queued", "running", "draft", "published"}, seen
    assert text_of(browser, "status-id") == DOC_ID and "QA pairs" in text_of(browser, "status-details")
    status, _, record = call(endpoint, f"/v1/documents/{DOC_ID}", key=KEY)  # the page showed the API's record
    assert status == 200 and record["status"] == "published" and record["adapter_stage"] == "final", record
    # A document reads published as soon as its adapter is; its timings come with the run's report, a moment
    # later (the worker group's shut-down): docs/serving.md, "What runs".
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    while record["report_status"] is None and time.monotonic() < deadline:
        time.sleep(1)
        record = call(endpoint, f"/v1/documents/{DOC_ID}", key=KEY)[2]
    assert record["report_status"] == "published", record
    timings = record["timings"]
    assert 0 < timings["draft_s"] <= timings["ttft_s"], timings  # a draft was answerable before the final adapter

    select = browser.find_element(By.ID, "model-select")
    wait_for(browser, lambda d: select.get_attribute("value") == DOC_ID, what="the document offered to ask")
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "ask").click()

    def answered(driver: WebDriver) -> bool:
        return all(text_of(driver, f"{side}-meta") for side in ("adapter", "base"))

    wait_for(browser, answered, what="both answers")
    adapter, base = text_of(browser, "adapter-answer"), text_of(browser, "base-answer")
    for side, answer in (("adapter", adapter), ("base", base)):
        meta = browser.find_element(By.ID, f"{side}-meta")
        assert answer and answer != "..." and "error" not in meta.get_attribute("class"), (side, answer, meta.text)
    assert "adapter from" in text_of(browser, "adapter-meta")  # X-Lift-Adapter-Source: not the base model
    assert text_of(browser, "adapter-label") == f"({DOC_ID})"

    shot = tmp_path / "web_page.png"
    shot.write_bytes(full_page_png(browser))
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        target = Path(os.environ[SCREENSHOT_ENV])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    print(f"page: published and answered in {time.monotonic() - started:.0f} s; adapter {adapter!r}, base {base!r}")
