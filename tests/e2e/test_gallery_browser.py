"""The gallery in a real headless Chromium: browse a finished batch, filter, search, open a job."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, sync_playwright
from sqlalchemy import update
from werkzeug.serving import make_server

from models import Job, JobStatus
from models.db import make_engine
from tests.fixtures.gallery import XSS_PROMPT, GalleryData
from tests.fixtures.services import free_port, unavailable

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "gallery"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def database_url(sqlite_database: str) -> str:
    """The browser run uses the embedded default database only; the pages are tested on both."""
    return sqlite_database


@pytest.fixture
def server(gallery_app: Flask) -> Iterator[str]:
    """The gallery's app served over loopback by a real HTTP server."""
    port = free_port()
    httpd = make_server("127.0.0.1", port, gallery_app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright (no downloaded browser)."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def shot(page: Page, name: str) -> None:
    """Save a full-page screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def images_loaded(page: Page, selector: str) -> list[int]:
    """The natural widths of the images matching `selector`, once each has finished loading."""
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=selector
    )
    widths: list[int] = page.eval_on_selector_all(selector, "els => els.map(i => i.naturalWidth)")
    return widths


def watch(page: Page, dialogs: list[str], problems: list[str]) -> None:
    """Record every dialog (an XSS would open one) and every script or loading error."""

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))


def no_horizontal_overflow(page: Page) -> bool:
    """True when nothing is wider than the viewport."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_browse_filter_search_and_open_a_job(
    browser: Browser, server: str, gallery_data: GalleryData
) -> None:
    dialogs: list[str] = []
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch(page, dialogs, problems)

    page.goto(server + "/")
    finished = page.locator(".batch-card", has_text="Autumn sample")
    assert "7 / 7 finished" in finished.locator(".progress-text").inner_text()
    running = page.locator(".batch-card", has_text="Still running")
    assert "4 / 10 finished" in running.locator(".progress-text").inner_text()
    shot(page, "01-batches")

    # The running batch's bar follows the database without a reload.
    engine = make_engine(gallery_data.database_url)
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.batch_id == gallery_data.running_batch_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELLED)
        )
    engine.dispose()
    running.locator(".progress-text", has_text="8 / 10 finished").wait_for(timeout=6000)

    page.click("text=Autumn sample")
    page.wait_for_url(f"**/batches/{gallery_data.batch_id}")
    assert page.locator(".tile").count() == 7
    widths = images_loaded(page, ".tile img")
    assert len(widths) == 5
    assert all(0 < width <= 256 for width in widths), "the grid shows thumbnails only"
    assert page.locator(".tile", has_text=XSS_PROMPT).count() == 1
    shot(page, "02-batch")

    page.click(".chip-FAILED")
    page.wait_for_url("**status=FAILED")
    assert page.locator(".tile").count() == 1
    assert "impossible staircase" in page.locator(".tile").inner_text()

    page.click(".chip >> text=All")
    page.fill("input[name=q]", "LIGHTHOUSE")
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**q=LIGHTHOUSE")
    assert page.locator(".tile").count() == 1
    shot(page, "03-search")

    page.click(".tile a")
    page.wait_for_url(f"**/jobs/{gallery_data.jobs['lighthouse']}")
    assert images_loaded(page, "img.full") == [1024]
    assert "long exposure" in page.locator(".prompt").inner_text()
    shot(page, "04-job")

    page.goto(f"{server}/jobs/{gallery_data.jobs['xss']}")
    assert page.locator(".prompt").inner_text() == XSS_PROMPT
    assert page.locator(".prompt script").count() == 0
    shot(page, "05-job-xss")

    missing = context.new_page()
    missing.goto(f"{server}/jobs/00000000-0000-0000-0000-000000000000")
    assert "404" in missing.locator("h1").inner_text()
    context.close()

    # The phone run also checks the dark colour scheme.
    phone = browser.new_context(
        viewport={"width": 375, "height": 812}, is_mobile=True, color_scheme="dark"
    )
    page = phone.new_page()
    watch(page, dialogs, problems)
    for name, path in [
        ("06-phone-batches", "/"),
        ("07-phone-batch", f"/batches/{gallery_data.batch_id}"),
        ("08-phone-job", f"/jobs/{gallery_data.jobs['xss']}"),
        ("09-phone-job-failed", f"/jobs/{gallery_data.jobs['stairs']}"),
    ]:
        page.goto(server + path)
        images_loaded(page, "img")
        shot(page, name)
        assert no_horizontal_overflow(page), f"{path} is wider than a 375 px phone"
    phone.close()

    assert dialogs == [], "a prompt's markup ran as script"
    assert problems == []
