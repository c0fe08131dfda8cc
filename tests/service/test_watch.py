"""The folder watcher (`npid watch`, service/watch/): a real folder and real processes, a private redis-server,
the API under a real uvicorn and `npid watch` as a subprocess. A photo copied in is found by POST /search, a
replaced one is embedded again under its id, a renamed one keeps its id, a removed one leaves the results; API
deletes stay deleted, uploads are not added twice, a half-written file is read once whole, an unreadable one is
skipped and counted; a drop of many files goes in batches with progress in GET /ready; NPID_WATCH=0 applies
nothing; of two watchers one applies; `npid up` runs one. The waits only catch hangs: every check polls.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ports
import pytest
import synthetic
from processes import RedisServer, wait_for

from index import ArtifactStore, ItemMeta
from index.delta import Delta, LiveItems
from index.metadata import Metadata
from service.live.watching import read_progress
from service.watch.folder import is_api_write, is_collection_file, label_of, scan
from service.watch.plan import Found, make_plan
from service.watch.settle import Settling

ROOT = Path(__file__).resolve().parents[2]
KEY = "watch-test-key-0123456789"
HANG_S = 60  # generous: only a hang fails
FAST = {"NPID_WATCH_DEBOUNCE_S": "0.5", "NPID_WATCH_RESCAN_S": "1", "NPID_WATCH_LOCK_TTL_S": "3",
        "NPID_LOG_LEVEL": "INFO", "NPID_TORCH_THREADS": "1"}


# ------------------------------------------------------------------------------------------ the parts


def test_which_files_belong_to_the_collection(tmp_path):
    assert is_collection_file("cats/a.JPG") and is_collection_file("top.png") and is_collection_file("a/b/c.webp")
    for name in ("cats/.a.png", ".hidden/a.png", "uploads/.abc.png.tmp-x81k", "cats/a.png.tmp", "cats/a.png.part",
                 "cats/a.crdownload", "cats/a.png~", "cats/notes.txt", "cats/raw.cr2"):
        assert not is_collection_file(name), name
    assert label_of("cats/a.png", "uploads") == "cats" and label_of("a.png", "uploads") is None
    assert label_of("uploads/0123456789abcdef01234567.png", "uploads") is None
    assert is_api_write("uploads/x.png", "uploads") and is_api_write("cats/0123456789abcdef01234567.jpg", "uploads")
    assert not is_api_write("cats/IMG_0001.jpg", "uploads")
    (tmp_path / "cats").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ("cats/a.png", "cats/.b.png", ".git/c.png", "d.png", "cats/e.txt"):
        (tmp_path / name).write_bytes(b"x" * 3)
    assert sorted(scan(tmp_path)) == ["cats/a.png", "d.png"] and scan(tmp_path)["d.png"].size == 3
    assert sorted(scan(tmp_path, "cats")) == ["cats/a.png"]


def test_a_path_settles_once_it_held_still(tmp_path):
    now = [0.0]
    settling = Settling(tmp_path, 1.0, 5.0, lambda p: p.startswith("uploads/"), clock=lambda: now[0])
    (tmp_path / "uploads").mkdir()
    f, upload = tmp_path / "a.png", tmp_path / "uploads" / "u.png"
    f.write_bytes(b"half")
    upload.write_bytes(b"upload")
    settling.notice(["a.png", "gone.png", "uploads/u.png"])
    assert settling.settled() == [] and len(settling) == 3  # first look: the stat is recorded
    now[0] = 0.8
    f.write_bytes(b"half and the rest")  # still being written: the clock starts again
    assert settling.settled() == []
    now[0] = 1.5
    assert settling.settled() == []
    now[0] = 1.9
    assert settling.settled() == ["a.png"]  # unchanged for a second since 0.8
    now[0] = 5.1
    assert settling.settled() == ["uploads/u.png"]  # files the API may be writing wait longer
    now[0] = 6.1
    assert settling.settled() == ["gone.png"] and len(settling) == 0  # removals wait longest: after any rename's
    # other half


def item(i: int, path: str, sha: str) -> ItemMeta:
    return ItemMeta(i, path, None, 1, 1, sha, "2026-01-01T00:00:00Z")


def test_plan_follows_the_registry_rules():
    items = LiveItems(Metadata([item(1, "a/same.png", "s1"), item(2, "a/replaced.png", "s2"),
                                item(3, "a/old-name.png", "s3"), item(4, "a/gone.png", "s4"),
                                item(5, "a/original.png", "s5"), item(6, "uploads/u.png", "s6"),
                                item(7, "a/was-here.png", "s7")]), Delta.empty(4))
    on_disk = {"a/original.png", "uploads/u.png"}  # indexed paths outside the batch whose files are still there
    files = {
        "a/same.png": Found("a/same.png", (1, 1), "s1"),
        "a/replaced.png": Found("a/replaced.png", (1, 2), "new bytes"),
        "a/old-name.png": None, "a/gone.png": None,
        "b/new-name.png": Found("b/new-name.png", (1, 1), "s3"),  # a rename
        "b/copy.png": Found("b/copy.png", (1, 1), "s5"),  # a copy: a new image
        "uploads/again.png": Found("uploads/again.png", (1, 1), "s6"),  # the API's bytes again: left out
        "b/moved-earlier.png": Found("b/moved-earlier.png", (1, 1), "s7"),  # its old path's removal not seen yet
        "a/deleted.png": Found("a/deleted.png", (1, 1), "s9"),  # tombstoned
        "b/fresh.png": Found("b/fresh.png", (1, 1), "s10"),
    }
    plan = make_plan(files, items, {"a/deleted.png": 8}, lambda p: p.startswith("uploads/"),
                     lambda p: p in on_disk)
    assert [f.path for f in plan.same] == ["a/same.png"]
    assert [(it.id, f.path) for it, f in plan.replaces] == [(2, "a/replaced.png")]
    assert sorted((it.id, f.path) for it, f in plan.moves) == [(3, "b/new-name.png"), (7, "b/moved-earlier.png")]
    assert sorted(f.path for f in plan.adds) == ["b/copy.png", "b/fresh.png"]
    assert [it.id for it in plan.removes] == [4]
    assert sorted(f.path for f in plan.left_out) == ["a/deleted.png", "uploads/again.png"]


# ------------------------------------------------------------------------------------------ real processes


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def watchers(dirs, redis_url, tmp_path):
    """start(**env) -> a running `npid watch` over the private copies (its log file: .log); all stopped after."""
    collection, store = dirs
    started: list[subprocess.Popen] = []

    def start(**overrides: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NPID_")}
        env.update(PYTHONPATH=str(ROOT), NPID_COLLECTION_ROOT=str(collection), NPID_ARTIFACTS_DIR=str(store),
                   NPID_REDIS_URL=redis_url, **FAST, **overrides)
        log = tmp_path / f"watcher-{len(started)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "watch"], env=env, stdout=open(log, "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = log
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def said(proc, pattern: str) -> bool:
    return re.search(pattern, proc.log.read_text(errors="replace")) is not None


def top(url: str, data: bytes) -> dict:
    r = httpx.post(f"{url}/search", params={"k": 3}, files={"file": ("q.png", data, "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def found_as(url: str, data: bytes, path: str) -> dict | None:
    """The best hit for `data` if it is the file at `path` itself (same bytes: score 1)."""
    hit = top(url, data)
    return hit if hit["path"] == path and hit["score"] > 0.999 else None


def indexed(store: Path) -> dict[str, ItemMeta]:
    return {it.path: it for it in ArtifactStore(store).load(verify=False).searcher.metadata}


def watcher_up(store: Path, scans: int = 1):
    return wait_for(lambda: (p := read_progress(store)) is not None and p.scans >= scans and p, HANG_S,
                    "the watcher never finished a scan")


def settled_after(store: Path, scans: int):
    """The progress once two more full rescans have finished with nothing pending."""
    return wait_for(lambda: (p := read_progress(store)) is not None and p.scans >= scans + 2 and p.pending == 0
                    and p, HANG_S, "the watcher never settled")


def test_folder_changes_reach_search_with_stable_ids(serve, make_settings, dirs, watchers, redis_url):
    collection, store = dirs
    first, second = synthetic.noise_image(101, 20, 24, "PNG"), synthetic.noise_image(102, 20, 24, "PNG")
    with serve(make_settings(api_key=KEY, redis_url=redis_url)) as url:
        watchers()
        watcher_up(store)
        assert httpx.get(f"{url}/ready").json()["watch"]["state"] in ("watching", "scanning")

        (collection / "drops").mkdir()
        (collection / "drops" / "new.png").write_bytes(first)  # a photo copied in
        new_id = wait_for(lambda: found_as(url, first, "drops/new.png"), HANG_S, "the new file was not found")["id"]
        assert indexed(store)["drops/new.png"].label == "drops"

        (collection / "drops" / "new.png").write_bytes(second)  # replaced in place: embedded again, same id
        hit = wait_for(lambda: found_as(url, second, "drops/new.png"), HANG_S, "the replaced file was not found")
        assert hit["id"] == new_id and indexed(store)["drops/new.png"].sha256 == hashlib.sha256(second).hexdigest()

        (collection / "odd").rename(collection / "strange")  # a folder renamed: every file in it keeps its id
        os.rename(collection / "drops" / "new.png", collection / "circle.png")  # a file moved: same id
        before = indexed(store)
        wait_for(lambda: "circle.png" in (now := indexed(store)) and "strange/cmyk.jpg" in now, HANG_S,
                 "the renames were not applied")
        after = indexed(store)
        assert after["circle.png"].id == new_id and after["circle.png"].label is None and "drops/new.png" not in after
        for name in ("cmyk.jpg", "animated.gif", "scan.tiff"):
            assert after[f"strange/{name}"].id == before[f"odd/{name}"].id and f"odd/{name}" not in after
        assert len(after) == len(before)
        assert wait_for(lambda: found_as(url, second, "circle.png"), HANG_S, "not found moved")["id"] == new_id

        (collection / "circle.png").unlink()  # removed: leaves the results
        wait_for(lambda: top(url, second)["id"] != new_id, HANG_S, "the removed file is still found")
        assert "circle.png" not in indexed(store) and "circle.png" not in ArtifactStore(store).load().tombstones

        whole = synthetic.noise_image(103, 20, 24, "PNG")
        with open(collection / "drops" / "half.png", "wb") as fh:  # a file still being written
            fh.write(whole[: len(whole) // 2])
            fh.flush()
            time.sleep(0.3)  # a pause shorter than the debounce
            fh.write(whole[len(whole) // 2:])
        wait_for(lambda: found_as(url, whole, "drops/half.png"), HANG_S, "the half-written file was not found")
        assert indexed(store)["drops/half.png"].sha256 == hashlib.sha256(whole).hexdigest()
        assert read_progress(store).skipped == 0  # never read half-written

        (collection / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)  # unreadable
        wait_for(lambda: read_progress(store).skipped == 1, HANG_S, "the unreadable file was not counted")
        assert "disc/broken.png" not in indexed(store)

        victim = sorted(p for p in indexed(store) if p.startswith("disc/"))[0]  # deleted through the API
        r = httpx.delete(f"{url}/images/{indexed(store)[victim].id}", headers={"X-API-Key": KEY})
        assert r.status_code == 200 and not r.json()["file_deleted"]
        settled_after(store, read_progress(store).scans)  # rescans see the file, the tombstone keeps it out
        assert (collection / victim).is_file() and victim not in indexed(store)
        assert read_progress(store).skipped == 1  # the unreadable file was counted once, not at every rescan

        upload = synthetic.noise_image(104, 20, 24, "PNG")
        size, done = len(indexed(store)), read_progress(store).done
        r = httpx.post(f"{url}/images", headers={"X-API-Key": KEY}, files={"file": ("u.png", upload, "image/png")})
        assert r.status_code == 201, r.text
        wait_for(lambda: read_progress(store).pending >= 1, HANG_S, "the watcher never noticed the upload")
        settled_after(store, read_progress(store).scans)
        assert len(indexed(store)) == size + 1 and read_progress(store).done == done  # not added twice
        assert [p for p, it in indexed(store).items() if it.sha256 == hashlib.sha256(upload).hexdigest()] == \
               [r.json()["path"]]


def test_many_files_are_embedded_in_batches_with_progress_while_search_answers(serve, make_settings, dirs,
                                                                              watchers):
    collection, store = dirs
    query = (collection / "odd" / "cmyk.jpg").read_bytes()
    with serve(make_settings()) as url:
        watcher = watchers(NPID_WATCH_BATCH="16")
        watcher_up(store)
        drop = collection / "drop"
        drop.mkdir()
        images = {f"drop/{i:03d}.png": synthetic.noise_image(1000 + i, 20, 24, "PNG") for i in range(120)}
        for path, data in images.items():
            (collection / path).write_bytes(data)
        seen = []
        size = len(indexed(store))
        while (ready := httpx.get(f"{url}/ready", timeout=10).json())["collection_size"] < size + 120:
            seen.append((ready["watch"]["pending"], ready["watch"]["done"]))
            assert top(url, query)["path"] == "odd/cmyk.jpg"  # searches keep answering
            assert len(seen) < 2000, "the files were never all added"
            time.sleep(0.05)
        assert any(pending > 0 and 0 < done < 120 for pending, done in seen), seen  # progress was visible
    now = indexed(store)
    assert all(p in now for p in images) and len({now[p].id for p in images}) == 120
    batches = [int(n) for n in re.findall(r": (\d+) added", watcher.log.read_text())]
    assert sum(batches) == 120 and max(batches) <= 16 and len(batches) >= 120 // 16  # a version per batch of 16


def test_watching_off_applies_nothing(serve, make_settings, dirs, watchers):
    collection, store = dirs
    version = ArtifactStore(store).current_version()
    with serve(make_settings(watch=False)) as url:
        proc = watchers(NPID_WATCH="0")
        wait_for(lambda: said(proc, r"watching is off"), HANG_S, "the watcher did not say it is off")
        (collection / "new.png").write_bytes(synthetic.noise_image(105, 20, 24, "PNG"))
        time.sleep(3)  # several debounce intervals and rescan periods
        assert proc.poll() is None  # idle, not exited (a supervisor would restart it)
        assert ArtifactStore(store).current_version() == version and read_progress(store) is None
        assert httpx.get(f"{url}/ready").json()["watch"] is None


def test_of_two_watchers_one_applies_and_the_other_takes_over(dirs, watchers):
    collection, store = dirs
    a, b = watchers(), watchers()
    wait_for(lambda: said(a, "holding the watch lock") != said(b, "holding the watch lock"), HANG_S,
             "no watcher took the lock")
    holder, waiter = (a, b) if said(a, "holding the watch lock") else (b, a)
    wait_for(lambda: said(waiter, "another watcher holds the watch lock"), HANG_S, "the second one did not wait")
    watcher_up(store)
    (collection / "one.png").write_bytes(synthetic.noise_image(106, 20, 24, "PNG"))
    wait_for(lambda: "one.png" in indexed(store), HANG_S, "the file was not added")
    settled_after(store, read_progress(store).scans)
    assert said(holder, r"1 added") and not said(waiter, r"added")
    assert len([v for v in ArtifactStore(store).list() if v.manifest["origin"]["kind"] == "add"]) == 1

    os.killpg(holder.pid, signal.SIGKILL)  # the lock expires (3 s here) and the other one takes over
    holder.wait(10)
    (collection / "two.png").write_bytes(synthetic.noise_image(107, 20, 24, "PNG"))
    wait_for(lambda: "two.png" in indexed(store), HANG_S, "the second watcher never took over")
    assert said(waiter, "holding the watch lock") and said(waiter, r"1 added")


def test_npid_up_runs_one_watcher(dirs, tmp_path):
    collection, store = dirs
    api_port, redis_port = ports.free_port(), ports.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPID_")}
    env.update(PYTHONPATH=str(ROOT), NPID_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", NPID_API_KEY=KEY,
               NPID_POLL_INTERVAL_S="0.5", NPID_RATE_LIMIT_PER_MINUTE="0", NPID_WORKER_THREADS="1",
               NPID_KEEP_TRAINING="0", **FAST)
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up", str(collection), "--artifacts", str(store),
                           "--logs", str(tmp_path / "logs"), "--port", str(api_port)],
                          cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        for line in up.stdout:
            lines.append(line)
            if "npid-search is live" in line:
                break
        text = "".join(lines)
        assert "npid-search is live" in text, text
        pid = int(re.search(r"watching .* \(pid (\d+);", text)[1])
        data = synthetic.noise_image(108, 20, 24, "PNG")
        (collection / "dropped.png").write_bytes(data)
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: found_as(base, data, "dropped.png"), HANG_S, "npid up's watcher did not add the file")
        assert httpx.get(f"{base}/ready").json()["watch"]["watcher"].endswith(f":{pid}")
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=90)
    assert code == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped with the rest
