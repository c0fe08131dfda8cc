"""A publish interrupted at any point leaves a whole, loadable current version: the old one until the
pointer is switched, the new one after. Failures are injected between steps, and real processes are
killed (SIGKILL: no cleanup runs) at every step and at arbitrary moments."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index import ArtifactStore, NewItem
from index.artifact import STEPS

REPO = Path(__file__).resolve().parents[2]
D = 16
OLD_N, NEW_N = 50, 60

CHILD = """
import os, signal, sys
from index import ArtifactStore, NewItem
root, export, step = sys.argv[1:4]

def on_step(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

print("ready", flush=True)
ArtifactStore(root, keep=2).build(export, on_step=on_step)
"""


class Boom(Exception):
    pass


@pytest.fixture
def setup(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store", keep=2)
    old = store.build(make_export(vectors.random(OLD_N, D, seed=1), name="old"))
    return store, old, make_export(vectors.random(NEW_N, D, seed=2), name="new")


def leftovers(store: ArtifactStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.name.startswith("."))


def assert_whole(store: ArtifactStore, version: str, n: int) -> None:
    fresh = ArtifactStore(store.root)  # as a restarted process sees it
    assert fresh.current_version() == version
    lv = fresh.load()
    assert lv.version == version and lv.searcher.ntotal == n
    assert lv.searcher.search(lv.searcher.vector(int(lv.searcher.metadata.ids[0])), 1)[0][0].score > 0.999


@pytest.mark.parametrize("operation", ["build", "add"])
@pytest.mark.parametrize("step", STEPS)
def test_injected_failure(setup, vectors, step, operation):
    """A build, or an add (a delta next to hard links to its base's segment), failing at any step leaves the old
    or the new version current and whole, and the store keeps working."""
    store, old, new_export = setup
    switched = STEPS.index(step) >= STEPS.index("switched")

    def fail(name):
        if name == step:
            raise Boom(name)

    with pytest.raises(Boom):
        if operation == "build":
            store.build(new_export, on_step=fail)
        else:
            store.add(vectors.random(1, D, seed=5), [NewItem("up/a.png")], base=old, on_step=fail)
    grown = NEW_N if operation == "build" else OLD_N + 1
    assert_whole(store, "v000002" if switched else old, grown if switched else OLD_N)
    assert leftovers(store) == [".lock"]  # the failed writer cleaned up after itself
    version = store.build(new_export)  # and the store keeps working
    assert_whole(store, version, NEW_N)


def test_injected_failure_during_rollback(setup):
    store, old, new_export = setup
    new = store.build(new_export)

    def fail(name):
        raise Boom(name)

    with pytest.raises(Boom):
        store.rollback(on_step=fail)  # fails once the new pointer is durable, before it replaces the old
    assert_whole(store, new, NEW_N)
    assert store.rollback() == old


def run_child(store: ArtifactStore, export: Path, step: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(store.root), str(export), step], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


@pytest.mark.parametrize("step", STEPS)
def test_process_killed_at_each_step(setup, step):
    store, old, new_export = setup
    proc = run_child(store, new_export, step)
    assert proc.wait(timeout=120) == -signal.SIGKILL, proc.stderr.read()
    switched = STEPS.index(step) >= STEPS.index("switched")
    assert_whole(store, "v000002" if switched else old, NEW_N if switched else OLD_N)
    version = store.build(new_export)  # the next writer removes what the killed one left
    assert leftovers(store) == [".lock"]
    assert_whole(store, version, NEW_N)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.25, 0.3, 0.35, 0.5, 1.0])
def test_process_killed_at_arbitrary_moments(tmp_path, make_export, vectors, delay):
    store = ArtifactStore(tmp_path / "store", keep=2)
    old = store.build(make_export(vectors.random(OLD_N, D, seed=1), name="old"))
    big = make_export(vectors.random(20_000, D, seed=3), name="big")
    proc = run_child(store, big, "never")
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=60)
    current = store.current_version()
    assert current in (old, "v000002")
    assert_whole(store, current, OLD_N if current == old else 20_000)
    store.publish(old)
    assert leftovers(store) == [".lock"]
    np.testing.assert_array_equal(store.load().searcher.metadata.ids, np.arange(OLD_N))
