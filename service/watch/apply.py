"""Settled paths -> published versions, with the live model: one version for the moves, one for the removals, and
per `batch` files one for those replaced in place (re-embedded) and one for those added, each derived from the
version current at that moment through the index's own O(delta) writes (`ArtifactStore.replace` / `remove` /
`add`).

Like service/live/writes.py, every write names its base; when another writer (the API, a job) published first, the
index refuses it (VersionConflictError) and the step is planned again on the new current version, so nothing is
applied twice and nothing of the other writer's is undone (vectors are embedded again only if the model changed).
Files are hashed once to plan and read again to be embedded, EMBED_BATCH at a time; a file whose bytes changed in
between goes back to settling. Unreadable files are skipped and counted.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from durable import sha256_file
from index import EmptyCollectionError, NewItem, VersionConflictError
from service.live.compaction import Compactor
from service.live.engine import Engine
from service.live.version import LiveVersion, VersionRefused
from trainer.data import to_rgb

from .folder import Stat, is_api_write, label_of, stat_of
from .plan import Found, Plan, make_plan

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 5  # a write racing other writers is planned again on the new current version
EMBED_BATCH = 16  # images decoded and held at once while embedding


@dataclass
class Outcome:
    """What became of the paths: for the watcher's memory of the folder and its progress counts."""

    indexed: dict[str, Stat] = field(default_factory=dict)  # the index holds these files as they are now
    passed: dict[str, Stat] = field(default_factory=dict)  # looked at and left out as they are
    unreadable: set[str] = field(default_factory=set)  # (also in passed)
    absent: list[str] = field(default_factory=list)
    unsettled: set[str] = field(default_factory=set)  # changed while being read: to settle again
    done: int = 0  # files added, replaced, moved or removed

    @property
    def skipped(self) -> int:
        return len(self.unreadable)


@dataclass
class _Embedded:
    """Files embedded with one model: path -> (found, width, height, vector)."""

    digest: tuple[str, str]
    rows: dict[str, tuple[Found, int, int, np.ndarray]]


class Applier:
    def __init__(self, engine: Engine, root: Path, upload_subdir: str, batch: int,
                 on_progress: Callable[[int, Outcome], None] = lambda remaining, outcome: None):
        """on_progress(files still to embed, outcome so far): called after each batch."""
        self.engine, self.root, self.upload_subdir, self.batch = engine, root, upload_subdir, batch
        self.on_progress = on_progress
        self.compactor = Compactor(engine)

    def apply(self, paths: list[str], keep_going: Callable[[], bool] = lambda: True) -> Outcome:
        """Apply the settled paths; between batches, stop when keep_going() turns false (the rest is unsettled)."""
        out = Outcome()
        files = self._hash(paths, out)
        self._write(lambda live: self._moves(files, live, out), out)
        self._write(lambda live: self._removes(files, live, out), out)
        plan = self._plan(files, self._live())
        todo = sorted([f.path for f in plan.adds] + [f.path for _, f in plan.replaces])
        for start in range(0, len(todo), self.batch):
            if not keep_going():
                out.unsettled.update(todo[start:])
                break
            chunk = {p: files[p] for p in todo[start:start + self.batch]}
            embedded = self._embed(self._live(), list(chunk.values()), out)
            if embedded.rows:
                self._write(lambda live, e=embedded: self._publish(e, live, out), out)
            self.on_progress(len(todo) - start - len(chunk), out)
        final = self._plan(files, self._live())  # what the index now holds of these files
        out.indexed.update({f.path: f.stat for f in final.same})
        out.passed.update({f.path: f.stat for f in final.left_out})
        return out

    # ---------------------------------------------------------------------------------- the writes

    def _moves(self, files: dict[str, Found | None], live: LiveVersion, out: Outcome) -> str | None:
        plan = self._plan(files, live)
        if not plan.moves:
            return None
        items = [NewItem(f.path, label_of(f.path, self.upload_subdir), it.width, it.height, f.sha256)
                 for it, f in plan.moves]
        version = self.engine.store.replace([it.id for it, _ in plan.moves], items, base=live.loaded)
        log.info("%s: %d moved or renamed (same ids)", version, len(items))
        out.done += len(items)
        return version

    def _removes(self, files: dict[str, Found | None], live: LiveVersion, out: Outcome) -> str | None:
        plan = self._plan(files, live)
        if not plan.removes:
            return None
        try:
            version = self.engine.store.remove([it.id for it in plan.removes], base=live.loaded, tombstone=False)
        except EmptyCollectionError:
            log.warning("the files of every indexed image are gone: the index keeps its %d images until a file "
                        "comes back", len(plan.removes))
            return None
        log.info("%s: %d removed (their files are gone)", version, len(plan.removes))
        out.done += len(plan.removes)
        return version

    def _publish(self, embedded: _Embedded, live: LiveVersion, out: Outcome) -> str | None:
        """Planned again on `live`: the embedded files still to replace under their ids, and those to add."""
        if live.model_digest != embedded.digest:  # a new model went live meanwhile: embed with it
            fresh = self._embed(live, [found for found, *_ in embedded.rows.values()], out)
            embedded.digest, embedded.rows = fresh.digest, fresh.rows
        rows = embedded.rows
        plan = self._plan({p: r[0] for p, r in rows.items()}, live)
        if plan.replaces:  # a replace keeps ids, an add hands out new ones: one version each
            paths = [f.path for _, f in plan.replaces]
            version = self.engine.store.replace([it.id for it, _ in plan.replaces], self._items(rows, paths),
                                                base=live.loaded, vectors=np.stack([rows[p][3] for p in paths]))
            log.info("%s: %d replaced in place, re-embedded (same ids)", version, len(paths))
            out.done += len(paths)
            if not plan.adds:
                return version
            live = self._serve(version)
        if not plan.adds:
            return None
        paths = [f.path for f in plan.adds]
        version, ids = self.engine.store.add(np.stack([rows[p][3] for p in paths]), self._items(rows, paths),
                                             base=live.loaded)
        log.info("%s: %d added (ids %d..%d)", version, len(paths), int(ids[0]), int(ids[-1]))
        out.done += len(paths)
        return version

    def _write(self, change: Callable[[LiveVersion], str | None], out: Outcome) -> None:
        """Run `change(live)` (which writes a version derived from `live`, or nothing) on the current version, and
        serve what it wrote; planned again on the new current version when another writer published first."""
        for _ in range(WRITE_ATTEMPTS):
            try:
                version = change(self._live())
            except VersionConflictError:
                log.info("another writer published first: planning again on the new current version")
                continue
            if version is not None:
                self._serve(version)
            return
        raise VersionRefused("the index kept changing during the update; trying again later")

    # ---------------------------------------------------------------------------------- reading

    def _hash(self, paths: list[str], out: Outcome) -> dict[str, Found | None]:
        files: dict[str, Found | None] = {}
        for path in paths:
            st = stat_of(self.root, path)
            if st is None:
                files[path] = None
                out.absent.append(path)
                continue
            try:
                sha = sha256_file(self.root / path)
            except OSError as e:
                self._unreadable(path, st, e, out)
                continue
            if stat_of(self.root, path) != st:
                out.unsettled.add(path)
                continue
            files[path] = Found(path, st, sha)
        return files

    def _embed(self, live: LiveVersion, founds: list[Found], out: Outcome) -> _Embedded:
        """The files read again (their bytes must still be the ones hashed), decoded as the collection is
        (trainer.data: the header's size recorded, as builds do) and embedded with `live`'s model."""
        rows: dict[str, tuple[Found, int, int, np.ndarray]] = {}
        for i in range(0, len(founds), EMBED_BATCH):
            batch = []
            for found in founds[i:i + EMBED_BATCH]:
                decoded = self._decode(found, out)
                if decoded is not None:
                    batch.append((found, *decoded))
            if batch:
                vectors = live.embedder.embed([image for *_, image in batch])  # B x D
                for (found, width, height, _), vector in zip(batch, vectors, strict=True):
                    rows[found.path] = (found, width, height, vector)
        return _Embedded(live.model_digest, rows)

    def _decode(self, found: Found, out: Outcome) -> tuple[int, int, Image.Image] | None:
        try:
            data = (self.root / found.path).read_bytes()
        except OSError as e:
            self._unreadable(found.path, found.stat, e, out)
            return None
        if hashlib.sha256(data).hexdigest() != found.sha256:
            out.unsettled.add(found.path)
            return None
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                return width, height, to_rgb(im)
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad or truncated files
            self._unreadable(found.path, found.stat, e, out)
            return None

    # ---------------------------------------------------------------------------------- helpers

    def _items(self, rows, paths: list[str]) -> list[NewItem]:
        return [NewItem(p, label_of(p, self.upload_subdir), rows[p][1], rows[p][2], rows[p][0].sha256)
                for p in paths]

    def _live(self) -> LiveVersion:
        self.engine.check_for_new_version()
        live = self.engine.live
        if live is None:
            raise VersionRefused(self.engine.not_ready_reason or "no version is loaded")
        return live

    def _plan(self, files: dict[str, Found | None], live: LiveVersion) -> Plan:
        return make_plan(files, live.searcher.metadata, live.loaded.tombstones,
                         lambda p: is_api_write(p, self.upload_subdir),
                         lambda p: stat_of(self.root, p) is not None)

    def _serve(self, version: str) -> LiveVersion:
        live = self.engine.reload(version)
        self.compactor.compact_if_large(live)
        return live

    @staticmethod
    def _unreadable(path: str, st: Stat, e: Exception, out: Outcome) -> None:
        if path not in out.unreadable:
            log.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
        out.passed[path] = st
        out.unreadable.add(path)
