"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by selenium) against a `fpcancel serve` process on PostgreSQL and Redis. Each page is
saved as a screenshot under the test's temporary folder (`pytest --basetemp=DIR` keeps them
somewhere known)."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fpcancel.sandbox import SandboxServer
from tests.conftest import need
from tests.real.conftest import all_terminal, make_key, statuses, wait_until

pytestmark = pytest.mark.real

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these it waits on the network, which this machine does not have.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    need(
        Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
        "Chromium is not installed (apt-get install chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class Shots:
    def __init__(self, driver: Any, folder: Path) -> None:
        self.driver = driver
        self.folder = folder
        folder.mkdir(exist_ok=True)
        self.count = 0

    def take(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        # The whole page, not only the window: as tall as the document.
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1400, max(1000, min(int(height) + 40, 6000)))
        assert self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1400, 1000)
        return path


def test_ops_sign_in_filter_open_a_job_retry_it_and_upload_a_csv(
    browser: Any,
    tmp_path: Path,
    env: dict[str, str],
    sandbox: SandboxServer,
    sessions: Any,
    start_worker: Any,
    start_server: Any,
) -> None:
    """Sign in with an ops key; filter the jobs table to dead; open the dead job; retry it with
    the confirmation and see it queued; upload a CSV with a bad line and see the line named."""
    from selenium.webdriver.common.by import By

    sandbox.set_order("ODR500000002", script=["510"] * 50)
    sandbox.set_order("ODR500000003", status="PAID")
    enqueue_key = make_key(env, "node-shop", "enqueue")
    ops_key = make_key(env, "anna", "ops")
    server = start_server(env)
    import requests

    for order, note in (
        ("ODR500000001", "Customer changed their mind"),
        ("ODR500000002", "<b>bold</b> & <script>x()</script>"),
        ("ODR500000003", "Duplicate order"),
    ):
        made = requests.post(
            server.url + "/v1/cancellations",
            json={"order_uuid": order, "note": note, "source": "node-shop"},
            headers={"Authorization": f"Bearer {enqueue_key}"},
            timeout=10,
        )
        assert made.status_code == 201, made.text
    worker = start_worker(env)
    wait_until(lambda: all_terminal(sessions), 60, "the jobs to end")
    worker.stop()
    assert statuses(sessions) == {
        "ODR500000001": "succeeded",
        "ODR500000002": "dead",
        "ODR500000003": "already_paid",
    }
    shots = Shots(browser, tmp_path / "screenshots")

    browser.get(server.url + "/")
    assert "/signin" in browser.current_url
    shots.take("signin")
    browser.find_element(By.ID, "key").send_keys(ops_key)
    browser.find_element(By.CSS_SELECTOR, "section.signin button[type=submit]").click()
    wait_until(lambda: "Overview" in browser.title, 10, "the overview")
    assert "Jobs by status" in browser.page_source and browser.page_source.count("<svg") == 3
    shots.take("overview")

    browser.find_element(By.LINK_TEXT, "Jobs").click()
    wait_until(lambda: "Jobs" in browser.title, 10, "the jobs page")
    browser.find_element(By.CSS_SELECTOR, "input[name=status][value=dead]").click()
    browser.find_element(By.CSS_SELECTOR, "input[name=source]").send_keys("node-shop")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_until(lambda: "status=dead" in browser.current_url, 10, "the filtered table")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td.mono").text for r in rows] == ["ODR500000002"]
    shots.take("jobs-filtered-dead")

    rows[0].find_element(By.CSS_SELECTOR, "td a").click()
    wait_until(lambda: "Job " in browser.title, 10, "the job page")
    note = browser.find_element(By.CSS_SELECTOR, "dl.fields dd.text").text
    assert note == "<b>bold</b> & <script>x()</script>"  # shown as text, not run or rendered
    calls = browser.find_elements(By.CSS_SELECTOR, "table.calls tbody tr")
    assert len(calls) >= 4 and "510" in calls[0].text
    assert "cancel_job.finished" in browser.page_source
    shots.take("job-dead")

    browser.find_element(By.LINK_TEXT, "Retry this job…").click()
    wait_until(lambda: "Retry job" in browser.title, 10, "the confirmation")
    shots.take("retry-confirm")
    browser.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait_until(lambda: "done=retried" in browser.current_url, 10, "the retried job")
    assert browser.find_element(By.CSS_SELECTOR, "h1 .status").text == "queued"
    assert "Sent round again" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    assert statuses(sessions)["ODR500000002"] == "queued"
    shots.take("job-queued")

    csv_path = tmp_path / "stock-out.csv"
    csv_path.write_text(
        "order_uuid,note\nODR600000001,Out of stock\nODR 600000002,Out of stock\nODR600000003,Out of stock\n"
    )
    browser.find_element(By.LINK_TEXT, "Upload").click()
    wait_until(lambda: "Upload" in browser.title, 10, "the upload page")
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(csv_path))
    browser.find_element(By.CSS_SELECTOR, "input[name=source]").send_keys("stockout")
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    wait_until(lambda: "badlines" in browser.page_source, 10, "the bad lines")
    bad = browser.find_elements(By.CSS_SELECTOR, "table.badlines tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in bad] == ["line 3"]
    assert "order_uuid" in bad[0].text and "nothing was enqueued" in browser.page_source
    assert "ODR600000001" not in statuses(sessions)
    shots.take("upload-bad-line")

    browser.find_element(By.LINK_TEXT, "Events").click()
    wait_until(lambda: "Events" in browser.title, 10, "the events page")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.events tbody tr")) == 3
    shots.take("events")

    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait_until(lambda: "/signin" in browser.current_url, 10, "signing out")
    browser.get(server.url + "/jobs")
    assert "/signin" in browser.current_url
    assert shots.count == 8
