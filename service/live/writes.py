"""Changes to the served collection made by this process: adds, deletes and rollbacks, each written as a new
published version (index/delta.py) and swapped in at once, so the writer's next search sees it.

Writers of this process take turns (one lock); a writer of another process that published first makes a
change fail with VersionConflictError, and the change is redone on the new current version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from index import Embed, ItemMeta, NewItem, VersionConflictError

from .compaction import Compactor
from .engine import Engine
from .version import LiveVersion, VersionRefused

log = logging.getLogger(__name__)

T = TypeVar("T")
ADD_ATTEMPTS = 3  # an add that races another writer re-embeds with the new current version and retries


@dataclass(frozen=True, slots=True)
class Added:
    item: ItemMeta
    created: bool  # False: the same bytes were already in the collection (item is that image)


class Writes:
    """add / remove / rollback on the engine's live version. Blocking: call from threads."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.compactor = Compactor(engine)
        self._lock = threading.Lock()  # one add, delete or rollback at a time from this process

    def add(self, uploads: list[tuple[Image.Image, NewItem]]) -> tuple[list[Added], LiveVersion]:
        """Add images to the index as one new published version, embedded with the current version's model.

        An image whose bytes (NewItem.sha256) the collection already holds is not added again: its entry is that
        image (created False); so is a repeat within the batch.
        """
        def change(live: LiveVersion) -> tuple[str | None, list[Added | int]]:
            answers: list[Added | str] = []  # an image already indexed, or the sha256 of one to add
            todo: dict[str, tuple[Image.Image, NewItem]] = {}  # sha256 -> the first upload with those bytes
            for image, item in uploads:
                existing = live.find_sha(item.sha256)
                answers.append(Added(existing, False) if existing is not None else item.sha256)
                if existing is None:
                    todo.setdefault(item.sha256, (image, item))
            if not todo:
                return None, answers
            vectors = live.embedder.embed([image for image, _ in todo.values()])  # M x D
            version, ids = self.engine.store.add(vectors, [item for _, item in todo.values()], base=live.loaded)
            new_id = dict(zip(todo, (int(i) for i in ids), strict=True))
            return version, [a if isinstance(a, Added) else new_id[a] for a in answers]

        version, answers = self._write(change)
        new = self.engine.live if version is None else self.engine.reload(version)
        firsts: set[int] = set()
        out = []
        for a in answers:
            if isinstance(a, Added):
                out.append(a)
            else:  # a repeat of the same bytes within the batch answers like an image already indexed
                out.append(Added(new.item(a), a not in firsts))
                firsts.add(a)
        self.compactor.compact_if_large(new)
        return out, new

    def remove(self, image_id: int) -> tuple[ItemMeta, LiveVersion]:
        """Remove an image from the index as a new published version (its path tombstoned). KeyError when it is
        not in the collection; index.EmptyCollectionError when it is the last image."""
        def change(live: LiveVersion) -> tuple[str, ItemMeta]:
            item = live.item(image_id)
            if item is None:
                raise KeyError(image_id)
            return self.engine.store.remove([image_id], base=live.loaded), item

        version, item = self._write(change)
        new = self.engine.reload(version)
        self.compactor.compact_if_large(new)
        return item, new

    def rollback(self, version: str, embed: Embed) -> LiveVersion:
        """Publish `version`'s model and collection again, carrying the adds and deletes made since (the adds
        embedded by `embed` with that version's model), and serve it."""
        with self._lock:
            published = self.engine.store.rollback(to=version, embed=embed)
        return self.engine.reload(published)

    def _write(self, change: Callable[[LiveVersion], tuple[str | None, T]]) -> tuple[str | None, T]:
        """Run `change(live)` (which writes a version derived from `live`) on the current version, retrying
        with the new one when another writer published first."""
        engine = self.engine
        with self._lock:
            for _ in range(ADD_ATTEMPTS):
                engine.check_for_new_version()
                live = engine.live
                if live is None:
                    raise VersionRefused(engine.not_ready_reason)
                try:
                    return change(live)
                except VersionConflictError:  # another writer published first: redo it on its version
                    if engine.store.current_version() == engine.refused:
                        raise VersionRefused(f"the current index version {engine.refused} was refused: the "
                                             "collection cannot change until a loadable version is published") from None
                    log.info("version moved during an update; retrying on the new current version")
            raise VersionRefused("the index kept changing during the update; try again")
