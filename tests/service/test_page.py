"""The web page in headless Chromium: a real upload, the grid of neighbours, click-to-search, a screenshot.

Uses Debian's chromium (/usr/bin/chromium) through Playwright; skipped where it is not installed.
The screenshot lands in test-artifacts/service-page.png.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from service.live.watching import WatchProgress, write_progress

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


def test_upload_shows_the_neighbour_grid_and_the_status_line(serve, make_settings, dirs):
    from playwright.sync_api import expect, sync_playwright

    collection, store = dirs
    query = collection / "checker" / "0002.png"
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(make_settings()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url + "/")
            knn = httpx.get(url + "/ready").json()["knn"]  # the fixture's version has labels, no quality figure
            status = f"version v000001 · 33 images · kNN top-1 {knn['top1@5']:.1f}%"
            expect(page.locator("#status")).to_have_text(status)
            write_progress(store, WatchProgress(state="applying", pending=5, done=3))  # as `npid watch` writes it
            expect(page.locator("#status")).to_have_text(status + " · indexing new files: 3 done, 5 waiting",
                                                         timeout=30_000)

            page.set_input_files("#file", str(query))
            hits = page.locator("#results .hit")
            expect(hits).to_have_count(12)  # the page asks for 12 by default
            first = hits.first
            expect(first.locator(".score")).to_have_text(re.compile(r"^1\.0{3,7} · p100\.00$"))  # cosine, percentile
            expect(first.locator(".label")).to_have_text("checker")
            assert first.get_attribute("title") == "checker/0002.png"
            expect(page.locator("#summary")).to_contain_text("12 of 12 neighbours of 0002.png")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")

            clicked = hits.nth(1).get_attribute("data-id")
            title = hits.nth(1).get_attribute("title")
            hits.nth(1).click()
            expect(page.locator("#summary")).to_contain_text(f"neighbours of {title}")
            expect(hits).to_have_count(12)
            assert clicked not in hits.evaluate_all("els => els.map(e => e.dataset.id)")

            page.select_option("#k", "6")  # re-runs the last search
            expect(hits).to_have_count(6)
            page.set_input_files("#file", str(query))  # the same file picked again searches again
            expect(page.locator("#summary")).to_contain_text("6 of 6 neighbours of 0002.png")
            expect(page.locator("#message")).to_have_text("")
            page.screenshot(path=str(ARTIFACTS / "service-page.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "service-page.png").stat().st_size > 10_000


def test_page_shows_upload_errors(serve, make_settings, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all")
    with serve(make_settings()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.set_input_files("#file", str(notes))
            expect(page.locator("#message")).to_have_text(
                "unsupported image format: send JPEG, PNG, WebP, GIF, BMP or TIFF")
            expect(page.locator("#results .hit")).to_have_count(0)
        finally:
            browser.close()
