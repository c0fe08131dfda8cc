"""The page's browse and duplicates views in headless Chromium: the grid loads on as it scrolls, the label filter,
clicking an image shows its neighbours, the duplicate groups with thumbnails and links; screenshots in tmp_path.

Uses Debian's chromium (/usr/bin/chromium) through Playwright; skipped where it is not installed.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "page-key"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


def same_pixels(path: Path, note: str) -> bytes:
    """The picture at `path` in a new PNG file (other bytes): an exact duplicate the index does not dedupe."""
    info = PngImagePlugin.PngInfo()
    info.add_text("note", note)
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_browse_scrolls_filters_and_opens_neighbours(serve, make_settings, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with serve(make_settings()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 600})
            page.goto(url + "/#browse")
            tiles = page.locator("#browse-grid .tile")
            expect(page.locator("#view-search")).to_be_hidden()
            # the first page is 24 of 33, newest first; scrolling to the end loads the rest
            expect(page.locator("#browse-summary")).to_contain_text("24 of 33 images")
            page.wait_for_timeout(500)
            expect(tiles).to_have_count(24)
            expect(page.locator("#browse-more")).to_be_visible()
            page.mouse.wheel(0, 5000)
            expect(tiles).to_have_count(33)
            expect(page.locator("#browse-summary")).to_contain_text("33 of 33 images")
            expect(page.locator("#browse-more")).to_be_hidden()
            ids = tiles.evaluate_all("els => els.map(e => Number(e.dataset.id))")
            assert len(set(ids)) == 33
            page.wait_for_function(
                "() => [...document.querySelectorAll('#browse-grid img')].every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(tmp_path / "browse.png"), full_page=True)

            page.select_option("#browse-label", "disc")
            expect(tiles).to_have_count(6)
            assert all(t.startswith("disc/") for t in tiles.evaluate_all("els => els.map(e => e.title)"))
            page.select_option("#browse-sort", "path")
            expect(tiles.first).to_have_attribute("title", "disc/0000.png")

            tiles.nth(2).click()  # disc/0002.png: its neighbours, in the search view
            expect(page.locator("#view-search")).to_be_visible()
            expect(page.locator("#summary")).to_contain_text("neighbours of disc/0002.png")
            expect(page.locator("#results .hit")).to_have_count(12)
            assert "disc/0002.png" not in page.locator("#results .hit").evaluate_all("els => els.map(e => e.title)")
            expect(page.locator("#tab-search")).to_have_class("tab active")
        finally:
            browser.close()
    assert (tmp_path / "browse.png").stat().st_size > 10_000


def test_duplicates_view_lists_groups_with_thumbnails_and_links(serve, make_settings, dirs, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    collection, _ = dirs
    with serve(make_settings(api_key=KEY)) as url, sync_playwright() as p:
        planted = []
        for n, source in enumerate(["checker/0001.png", "checker/0001.png", "vstripes/0003.png"]):
            r = httpx.post(url + "/images", headers={"X-API-Key": KEY},
                           files={"file": (f"{n}.png", same_pixels(collection / source, str(n)), "image/png")})
            assert r.status_code == 201, r.text
            planted.append(r.json()["id"])
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url + "/#duplicates")
            expect(page.locator("#dup-summary")).to_contain_text("estimated without labels")
            default = float(page.locator("#dup-threshold").get_attribute("placeholder"))
            assert -1 <= default <= 1

            page.fill("#dup-threshold", "0.9999")
            page.click("#dup-apply")
            groups = page.locator("#dup-groups .group")
            expect(groups).to_have_count(2)
            expect(page.locator("#dup-summary")).to_contain_text("2 groups · 5 images at cosine ≥ 0.99990 (as asked)")
            expect(groups.first.locator("h2")).to_contain_text("3 images")
            links = groups.first.locator("a.member")
            expect(links).to_have_count(3)
            hrefs = links.evaluate_all("els => els.map(e => e.getAttribute('href'))")
            assert set(hrefs) == {"/images/1", f"/images/{planted[0]}", f"/images/{planted[1]}"}
            expect(groups.nth(1).locator("a.member")).to_have_count(2)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#dup-groups img')].every(i => i.complete && i.naturalWidth > 0)")
            expect(page.locator("#dup-page")).to_have_text("groups 1–2 of 2")
            expect(page.locator("#dup-next")).to_be_disabled()
            page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)

            with page.expect_popup() as popup:  # a member opens its image
                links.first.click()
            opened = popup.value
            opened.wait_for_load_state()
            assert opened.url.startswith(url + "/images/")
            image = httpx.get(opened.url)
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert np.asarray(Image.open(io.BytesIO(image.content))).size > 0
        finally:
            browser.close()
    assert (tmp_path / "duplicates.png").stat().st_size > 10_000
