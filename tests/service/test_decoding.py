"""Bounded decoding: the pixel budget, JPEG draft mode, images shrunk before they leave the pool, and error
details without server paths."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.api.decoding import PixelBudget, shrink
from service.api.errors import without_paths
from service.api.uploads import UploadRejected, decode_upload


def jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("each, budget, most_at_once", [(60, 100, 1), (40, 100, 2), (10, 100, 4), (500, 100, 1)])
def test_pixel_budget_bounds_what_decodes_at_once(each, budget, most_at_once):
    pixels = PixelBudget(budget)
    running, peak, lock = [0], [0], threading.Lock()

    def decode():
        with pixels.hold(each):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == most_at_once  # by brute force: budget // each, at least 1 (a too-large decode runs alone)
    assert pixels.free == budget


def test_a_large_jpeg_decodes_in_draft_mode_near_the_size_needed_and_keeps_its_stored_size():
    data = jpeg(1600, 1200)
    decoded = decode_upload(PixelBudget(10**8), data, 40_000_000, side=100)
    assert decoded.size == (1600, 1200)  # what the file holds (recorded in the index)
    assert decoded.image.size == (200, 150)  # 1/8 scale: the smallest draft at least 100 px each way
    full = decode_upload(PixelBudget(10**8), data, 40_000_000)
    assert full.image.size == (1600, 1200)


def test_other_formats_are_box_reduced_to_twice_the_needed_side():
    buf = io.BytesIO()
    Image.new("RGB", (1000, 640), (10, 200, 30)).save(buf, "PNG")
    decoded = decode_upload(PixelBudget(10**8), buf.getvalue(), 40_000_000, side=64)
    assert decoded.size == (1000, 640) and decoded.image.size == (200, 128)  # 640 // 128 = 5: reduced by 5
    assert decoded.image.getpixel((50, 50)) == (10, 200, 30)
    small = Image.new("RGB", (100, 90))
    assert shrink(small, 32) is small  # under 2 x side on the short edge: untouched


def test_refusals_come_before_any_pixel_is_held():
    budget = PixelBudget(10)
    with budget.hold(10):  # the budget is exhausted: a refusal must not wait for it
        with pytest.raises(UploadRejected) as e:
            decode_upload(budget, jpeg(300, 200), 1000)
        assert e.value.status_code == 413


@pytest.mark.parametrize("text, shown", [
    ("no index version has been published in /srv/npid/store", "no index version has been published in <path>"),
    ("[Errno 2] No such file or directory: '/data/index/runs/ab12/checkpoint.pt'",
     "[Errno 2] No such file or directory: '<path>'"),
    ("ValueError: /tmp/x/y/checkpoint.pt belongs to a different run", "ValueError: <path> belongs to a different run"),
    ("see /images/3/thumbnail and http://host:8000/images/3", "see <path> and http://host:8000/images/3"),
    ("rate limit exceeded: at most 6 requests per minute", "rate limit exceeded: at most 6 requests per minute"),
])
def test_error_details_carry_no_server_paths(text, shown):
    assert without_paths(text) == shown
