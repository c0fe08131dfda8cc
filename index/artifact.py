"""ArtifactStore: immutable, checksummed index versions under one root, published atomically.

    <root>/CURRENT               the live version and the ones live before it (pointer.py)
    <root>/versions/v000007/     one directory per version (content.py), never modified once in place
    <root>/.lock                 held by writers (build, add, remove, replace, publish, rollback); readers never lock
    <root>/.stage-*, .trash-*    a version being written / deleted; left only by a crash, the next writer
                                 removes them

Publishing a version: every file is written into a stage directory and fsynced with it; the stage is
renamed to versions/<id> and the parent fsynced; CURRENT is replaced (temporary file, fsync, rename,
fsync). Until that last rename the previous version stays current; a crash anywhere leaves either the
old or the new version current, both whole. `on_step(name)` is called after each step, in order:
"staged", "renamed", "pointer-staged", "switched", "pruned" (for progress, logging and crash tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from durable import fsync_dir, fsync_tree

from .build import build_tuned, train_and_add
from .config import IndexConfig
from .content import (
    EMBEDDINGS_FILE,
    SEGMENT_FILES,
    Content,
    Segment,
    open_searcher,
    read_delta,
    read_segment,
    read_tombstones_of,
    spec_and_tuning,
    write_content,
)
from .delta import Delta, LiveItems
from .errors import (
    DamagedVersionError,
    EmptyCollectionError,
    IndexStoreError,
    VersionConflictError,
    VersionNotFoundError,
)
from .export import MODEL_FILES, read_export
from .manifest import (
    FORMAT,
    MANIFEST,
    ListedKind,
    VersionKind,
    digest_files,
    library_versions,
    read_manifest,
    seal,
    verify_files,
    version_kind,
)
from .metadata import ItemMeta, Metadata, NewItem, describe_items, utc_now
from .plan import choose_spec, estimate_bytes
from .pointer import POINTER, Pointer, read_pointer, write_pointer
from .registry import assign_ids, plan_rebase, read_next_id, write_next_id
from .search import Searcher, unit_rows

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
LOCK_FILE = ".lock"
STAGE_PREFIX = ".stage-"
TRASH_PREFIX = ".trash-"
VERSION_RE = re.compile(r"v(\d{6,})")
DEFAULT_KEEP = 5  # versions kept for rollback (the current one is always kept)
LOAD_ATTEMPTS = 3  # a version pruned while being loaded: retry with the new current one
STEPS = ("staged", "renamed", "pointer-staged", "switched", "pruned")

OnStep = Callable[[str], None] | None


def _seq(version: str) -> int:
    return int(version[1:])


def _step(on_step: OnStep, name: str) -> None:
    log.debug("publish step: %s", name)
    if on_step is not None:
        on_step(name)


@dataclass(frozen=True)
class LoadedVersion:
    """One loaded version: its searcher, its tombstones, and the directory holding model.pt + preprocess.json
    (embed queries with trainer.embed.Embedder.from_dir(directory))."""

    version: str
    directory: Path
    manifest: dict
    searcher: Searcher
    tombstones: dict[str, int] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.searcher.dim


@dataclass(frozen=True)
class VersionInfo:
    version: str
    current: bool
    manifest: dict | None  # None when the manifest is damaged
    problem: str | None = None

    @property
    def kind(self) -> ListedKind:
        return "damaged" if self.manifest is None else version_kind(self.manifest)


@dataclass(frozen=True)
class State:
    """What a writer needs of the version it derives from: no FAISS index, no vectors of the segment."""

    version: str
    directory: Path
    manifest: dict
    items: LiveItems
    tombstones: dict[str, int]

    @property
    def delta(self) -> Delta:
        return self.items.delta


# (model dir, items) -> (vectors MxD of the items it could embed, those items): how a rebase embeds the images
# it carries onto another model (the index itself never embeds)
Embed = Callable[[Path, list[ItemMeta]], tuple[np.ndarray, list[ItemMeta]]]


def _counts(size: int, dim: int, next_id: int, labelled: int, delta: Delta) -> dict:
    return {"vectors": int(size), "dim": int(dim), "next_id": int(next_id), "labelled": int(labelled),
            "delta": delta.size}


def _labelled(items: Iterable[ItemMeta]) -> int:
    return sum(it.label is not None for it in items)


class ArtifactStore:
    def __init__(self, root: str | Path, keep: int = DEFAULT_KEEP):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / VERSIONS_DIR

    # ---------------------------------------------------------------------------------- readers

    def current_version(self) -> str | None:
        """The live version id (one small file read), or None before the first publish."""
        pointer = read_pointer(self.root)
        return None if pointer is None else pointer.version

    def pointer(self) -> Pointer | None:
        return read_pointer(self.root)

    def versions(self) -> list[str]:
        """Version ids on disk, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted((d.name for d in self.versions_dir.iterdir() if VERSION_RE.fullmatch(d.name)), key=_seq)

    def directory(self, version: str) -> Path:
        path = self.versions_dir / version
        if not VERSION_RE.fullmatch(version) or not path.is_dir():
            have = ", ".join(self.versions()) or "none"
            raise VersionNotFoundError(f"version {version!r} not found in {self.root} (versions: {have})")
        return path

    def manifest(self, version: str) -> dict:
        """The version's manifest, its own checksum verified (the data files are not read)."""
        return read_manifest(self.directory(version))

    def verify(self, version: str) -> dict:
        """Check every file of a version against its manifest; DamagedVersionError names the first bad one."""
        directory = self.directory(version)
        manifest = read_manifest(directory)
        verify_files(directory, manifest)
        return manifest

    def load(self, version: str | None = None, verify: bool = True, gpu: bool = False,
             reuse: LoadedVersion | None = None) -> LoadedVersion:
        """Load a version (default: the current one), checksums verified unless verify=False.

        With `reuse` (a loaded version of this store), a version sharing its base segment is loaded in
        O(delta): the segment's index, vectors and metadata are reused, its files neither read nor re-hashed.
        """
        if version is not None:
            return self._load(version, verify, gpu, reuse)
        for attempt in range(LOAD_ATTEMPTS):
            current = self.current_version()
            if current is None:
                raise VersionNotFoundError(f"no version has been published in {self.root}")
            try:
                return self._load(current, verify, gpu, reuse)
            except (VersionNotFoundError, DamagedVersionError):
                if attempt + 1 == LOAD_ATTEMPTS or self.current_version() == current:
                    raise
                log.info("%s was replaced while loading it: loading the new current version", current)
        raise AssertionError("unreachable")

    def _load(self, version: str, verify: bool, gpu: bool, reuse: LoadedVersion | None) -> LoadedVersion:
        directory = self.directory(version)
        manifest = read_manifest(directory)
        shared = (reuse is not None and reuse.searcher.on_gpu == gpu
                  and _same_files(manifest, reuse.manifest, SEGMENT_FILES))
        skip: tuple[str, ...] = ()
        if shared:  # already verified and held in memory: this version's copies of them are never read
            same_model = _same_files(manifest, reuse.manifest, MODEL_FILES)
            skip = (*SEGMENT_FILES, *MODEL_FILES) if same_model else SEGMENT_FILES
        try:
            if verify:
                verify_files(directory, manifest, skip=skip)
            if shared:
                searcher = reuse.searcher.with_delta(read_delta(directory, manifest))
            else:
                searcher = open_searcher(directory, manifest, gpu)
            tombstones = read_tombstones_of(directory)
        except (OSError, ValueError, KeyError, TypeError) as e:  # vanished (pruned) or unverified damage
            raise DamagedVersionError(f"{version}: cannot be loaded ({e})") from e
        return LoadedVersion(version, directory, manifest, searcher, tombstones)

    def next_id(self) -> int:
        """The first id not handed out yet: every image entering the collection from now on gets one >= it."""
        current = self._pointer_or_none()
        return self._next_free(None if current is None else self.manifest(current.version))

    def list(self) -> list[VersionInfo]:
        """Every version on disk, oldest first, with its manifest (or why it could not be read)."""
        pointer = self._pointer_or_none()
        current = None if pointer is None else pointer.version
        out = []
        for version in self.versions():
            try:
                out.append(VersionInfo(version, version == current, self.manifest(version)))
            except (DamagedVersionError, VersionNotFoundError) as e:
                out.append(VersionInfo(version, version == current, None, str(e)))
        return out

    # ---------------------------------------------------------------------------------- writers

    def build(self, export_dir: str | Path, config: IndexConfig = IndexConfig(), publish: bool = True,
              collection_root: str | Path | None = None, on_step: OnStep = None) -> str:
        """A new version from a trainer export (published unless publish=False). Returns its id.

        Ids come from the registry of the current version (registry.py: a known path keeps its id, a
        tombstoned one is left out, a moved file keeps its id by content). Publishing rebases onto what was
        published meanwhile (see `publish_rebased`, here without carrying adds).
        """
        export = read_export(export_dir)
        root = collection_root if collection_root is not None else export.meta.get("collection_root")
        described = describe_items(export.items, root, utc_now())
        with self._writer():
            snapshot = self.current_version()
            state = None if snapshot is None else self._state(snapshot)
            items, rows, next_id = assign_ids(described, None if state is None else state.items,
                                              {} if state is None else state.tombstones,
                                              self._next_free(None if state is None else state.manifest))
            write_next_id(self.root, next_id)
        if not items:
            raise EmptyCollectionError(f"every image of {export.directory} was deleted from the collection")
        vectors = np.ascontiguousarray(export.embeddings[rows])  # N' x D
        ids = np.array([it.id for it in items], dtype=np.int64)  # N'
        spec = choose_spec(len(ids), export.dim, config)
        built = build_tuned(vectors, ids, spec, config)
        content = Content(spec, built.tuning, Segment(built.index, vectors, Metadata(items)), len(items),
                          Delta.empty(export.dim), {} if state is None else state.tombstones, export.directory)
        fields = {
            "origin": {"kind": "build", "export": str(export.directory.resolve()),
                       "export_created": export.meta.get("created")},
            "registry_base": snapshot,
            "collection_root": None if root is None else str(root),
            "training": {"config": export.meta.get("train_config"), "metrics": export.meta.get("metrics"),
                         "classes": export.meta.get("classes", [])},
            "counts": _counts(len(items), export.dim, next_id, _labelled(items), content.delta),
            "index": {"spec": spec.to_dict(), "tuning": built.tuning.to_dict(), "recall_measured_on": None,
                      "build_seconds": round(built.seconds, 3),
                      "estimated_bytes": estimate_bytes(spec, len(ids)), "config": config.to_dict()},
            **({"quality": export.meta["quality"]} if "quality" in export.meta else {}),
        }
        with self._writer():
            version = self._commit(content, fields, False, on_step)
            return self._rebase_and_switch(version, None, None, on_step, discard=True) if publish else version

    def publish_rebased(self, version: str, carry_from: int | None = None, embed: Embed | None = None,
                        on_step: OnStep = None) -> str:
        """Publish an unpublished version rebased onto the current one, atomically under the store's lock.

        What was deleted since its registry snapshot stays deleted; the current version's items with ids >=
        carry_from that it lacks (added meanwhile, e.g. uploads during a training) are embedded with its model
        by `embed` and carried over with their ids. Returns the version published: `version` itself when
        nothing changed meanwhile, else a new version sharing its segment.
        """
        with self._writer():
            return self._rebase_and_switch(version, carry_from, embed, on_step, discard=True)

    def add(self, vectors: np.ndarray, items: Iterable[NewItem | dict], base: str | LoadedVersion,
            publish: bool = True, on_step: OnStep = None) -> tuple[str, np.ndarray]:
        """A new version: `base` plus vectors (MxD, embedded with base's own model) under new ids.

        O(delta): the base segment is hard-linked, only the delta is written. Published only if `base` is still
        current (else VersionConflictError). Returns (version, ids M).
        """
        items = [it if isinstance(it, NewItem) else NewItem(**it) for it in items]
        with self._writer():
            state = self._base(base, publish)
            vectors = unit_rows(vectors, int(state.manifest["counts"]["dim"]))  # M x D
            if len(items) != len(vectors):
                raise ValueError(f"{len(vectors)} vectors but {len(items)} items")
            if len(vectors) == 0:
                raise ValueError("nothing to add")
            first = self._next_free(state.manifest)
            ids = np.arange(first, first + len(items), dtype=np.int64)  # M
            write_next_id(self.root, first + len(items))
            added = utc_now()
            rows = [ItemMeta(int(i), it.path, it.label, it.width, it.height, it.sha256, added)
                    for i, it in zip(ids, items, strict=True)]
            new_paths = {it.path for it in rows}
            tombstones = {p: i for p, i in state.tombstones.items() if p not in new_paths}
            delta = state.delta.with_added(vectors, rows)
            fields = self._derived_fields(state, {"kind": "add", "base": state.version, "ids": len(ids)}, delta,
                                          first + len(ids), _labelled(rows))
            return self._commit(self._derived(state, delta, tombstones), fields, publish, on_step), ids

    def remove(self, ids: Iterable[int], base: str | LoadedVersion, publish: bool = True,
               on_step: OnStep = None, tombstone: bool = True) -> str:
        """A new version: `base` without the items `ids` (all must exist), their paths tombstoned. O(delta).

        tombstone=False: the paths are not tombstoned (their files left the collection folder: nothing was
        deleted on purpose, and a file that comes back at one of them is a new image)."""
        ids = np.unique(np.asarray(list(ids), dtype=np.int64))
        with self._writer():
            state = self._base(base, publish)
            state.items.check_removable(ids)
            gone = [state.items.get(int(i)) for i in ids]
            tombstones = {**state.tombstones, **({it.path: it.id for it in gone} if tombstone else {})}
            delta = state.delta.without(ids)
            fields = self._derived_fields(state, {"kind": "remove", "base": state.version, "ids": len(ids)}, delta,
                                          self._next_free(state.manifest), -_labelled(gone))
            return self._commit(self._derived(state, delta, tombstones), fields, publish, on_step)

    def replace(self, ids: Iterable[int], items: Iterable[NewItem | dict], base: str | LoadedVersion,
                vectors: np.ndarray | None = None, publish: bool = True, on_step: OnStep = None) -> str:
        """A new version in which each of `ids` (all in the collection) is described by its item: a file moved or
        renamed (`vectors` None: the stored embedding is kept, origin "move") or replaced in place by other bytes
        (`vectors` MxD, embedded with base's own model, origin "replace"). The ids, and when each was added,
        stay; a tombstone on a new path is lifted; a path held by another item is refused.

        O(delta): each row leaves the segment (its id joins removed.npy) or the delta, and is written to the delta
        again under the same id. Published only if `base` is still current (else VersionConflictError).
        """
        ids = np.asarray(list(ids), dtype=np.int64)
        items = [it if isinstance(it, NewItem) else NewItem(**it) for it in items]
        if len(ids) != len(items):
            raise ValueError(f"{len(ids)} ids but {len(items)} items")
        if len(ids) == 0:
            raise ValueError("nothing to replace")
        if len(np.unique(ids)) != len(ids) or len({it.path for it in items}) != len(items):
            raise ValueError("an id or a path appears twice")
        with self._writer():
            state = self._base(base, publish)
            absent = [int(i) for i in ids if int(i) not in state.items]
            if absent:
                raise IndexStoreError(f"ids not in this version: {absent[:10]}{' ...' if len(absent) > 10 else ''}")
            dim = int(state.manifest["counts"]["dim"])
            moved = vectors is None
            vectors = unit_rows(_stored_vectors(state, ids) if moved else vectors, dim)  # M x D
            if len(vectors) != len(ids):
                raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
            old = [state.items.get(int(i)) for i in ids]
            replaced = {int(i) for i in ids}
            for it in items:
                holder = state.items.find_path(it.path)
                if holder is not None and holder.id not in replaced:
                    raise IndexStoreError(f"the path {it.path!r} is held by image {holder.id}")
            rows = [ItemMeta(int(i), it.path, it.label, it.width, it.height, it.sha256, was.added)
                    for i, it, was in zip(ids, items, old, strict=True)]
            new_paths = {it.path for it in rows}
            tombstones = {p: i for p, i in state.tombstones.items() if p not in new_paths}
            delta = state.delta.without(ids).with_added(vectors, rows)
            origin = {"kind": "move" if moved else "replace", "base": state.version, "ids": len(ids)}
            fields = self._derived_fields(state, origin, delta, self._next_free(state.manifest),
                                          _labelled(rows) - _labelled(old))
            return self._commit(self._derived(state, delta, tombstones), fields, publish, on_step)

    def compact(self, base: str, on_step: OnStep = None) -> str | None:
        """Fold `base`'s delta into a new segment and publish it. O(collection), done outside the store's lock:
        adds and deletes published meanwhile on the same segment are carried onto the new one as its delta;
        if the current version moved to another segment (a retrain), the compaction is dropped (None)."""
        state = self._state(base)
        if state.delta.size == 0:
            return None
        spec, tuning = spec_and_tuning(state.manifest)
        segment = read_segment(state.directory)
        keep = ~np.isin(segment.metadata.ids, state.delta.removed)  # N bool
        metadata = Metadata([it for it, k in zip(segment.metadata.items, keep, strict=True) if k]
                            + state.delta.metadata.items)
        embeddings = np.concatenate([segment.embeddings[keep], state.delta.vectors])  # N' x D
        if spec.kind == "hnsw":  # HNSW cannot delete in place: rebuild the graph from the stored vectors
            index = train_and_add(spec, embeddings, metadata.ids, gpu=False)
        else:  # exact and IVF kinds update in place (IVF keeps its trained centroids)
            segment.index.remove_ids(state.delta.removed)
            segment.index.add_with_ids(state.delta.vectors, state.delta.metadata.ids)
            index = segment.index
        with self._writer():
            current = self.current_version()
            now = state if current == base else self._state(current)
            if not _same_files(now.manifest, state.manifest, (*SEGMENT_FILES, *MODEL_FILES)):
                log.info("compaction of %s dropped: %s has another segment or model", base, current)
                return None
            delta = since(state.delta, now.delta)
            content = Content(spec, tuning, Segment(index, embeddings, metadata), len(metadata), delta,
                              now.tombstones, state.directory, state.directory, state.manifest["files"])
            fields = self._derived_fields(now, {"kind": "compact", "base": current, "ids": state.delta.size}, delta,
                                          self._next_free(now.manifest), 0)
            fields["counts"]["vectors"] = content.size
            fields["index"]["estimated_bytes"] = estimate_bytes(spec, content.size)
            return self._commit(content, fields, True, on_step)

    def publish(self, version: str, on_step: OnStep = None) -> None:
        """Make an existing version current as it is (after verifying every file), then prune old versions."""
        with self._writer():
            self.verify(version)
            self._switch(version, on_step)

    def rollback(self, to: str | None = None, embed: Embed | None = None, on_step: OnStep = None) -> str:
        """Make an earlier version current again.

        Without `to`: the previously current version (skipping damaged or pruned ones), as it was. With `to`
        and `embed`: a new version with `to`'s model and collection, carrying what happened since: images
        deleted since stay deleted, images added since are embedded with `to`'s model and keep their ids.
        With `to` alone: `to` exactly as it was (images added since leave the index until a re-index job).
        """
        with self._writer():
            if to is not None:
                self.verify(to)
                if embed is None:
                    self._switch(to, on_step)
                    return to
                return self._rebase_and_switch(to, 0, embed, on_step)
            pointer = read_pointer(self.root)
            if pointer is None:
                raise VersionNotFoundError(f"no version has been published in {self.root}")
            for i, version in enumerate(pointer.history):
                try:
                    self.verify(version)
                except (VersionNotFoundError, DamagedVersionError) as e:
                    log.warning("cannot roll back to %s: %s", version, e)
                    continue
                write_pointer(self.root, Pointer(version, pointer.history[i + 1:]),
                              before_replace=lambda: _step(on_step, "pointer-staged"))
                _step(on_step, "switched")
                return version
            raise IndexStoreError(f"no earlier version of {pointer.version} to roll back to")

    # ---------------------------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _writer(self):
        """Exclusive writer lock on the store; removes what interrupted writers left behind."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._remove_leftovers()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _remove_leftovers(self) -> None:
        for path in self.root.iterdir():
            if path.name.startswith((STAGE_PREFIX, TRASH_PREFIX)):
                log.warning("removing %s, left by an interrupted writer", path)
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith((f".{POINTER}.tmp-", ".NEXT_ID.tmp-")):
                path.unlink(missing_ok=True)

    def _pointer_or_none(self) -> Pointer | None:
        try:
            return read_pointer(self.root)
        except DamagedVersionError as e:
            log.warning("%s", e)
            return None

    def _state(self, version: str) -> State:
        """A version's registry and delta, its manifest verified (its files are not re-hashed)."""
        directory = self.directory(version)
        manifest = read_manifest(directory)
        try:
            items = LiveItems(Metadata.read(directory / SEGMENT_FILES[2]), read_delta(directory, manifest))
            return State(version, directory, manifest, items, read_tombstones_of(directory))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DamagedVersionError(f"{version}: cannot be read ({e})") from e

    def _base(self, base: str | LoadedVersion, publish: bool) -> State:
        name = base if isinstance(base, str) else base.version
        current = self.current_version()
        if publish and current != name:
            raise VersionConflictError(f"{name} is no longer the current version ({current} is): embed with "
                                       f"the current version's model and try again")
        if isinstance(base, str):
            return self._state(base)
        return State(base.version, base.directory, base.manifest, base.searcher.metadata, base.tombstones)

    def _next_free(self, manifest: dict | None) -> int:
        """The first id never handed out: above the store's high-water mark and every version's next_id."""
        known = [read_next_id(self.root)] + ([] if manifest is None else [int(manifest["counts"]["next_id"])])
        if known[0] == 0:  # a store written before NEXT_ID existed: ask every version
            for version in self.versions():
                try:
                    known.append(int(self.manifest(version)["counts"]["next_id"]))
                except IndexStoreError:
                    continue
        return max(known)

    @staticmethod
    def _derived(state: State, delta: Delta, tombstones: dict[str, int]) -> Content:
        """Content sharing `state`'s segment and model (hard links), with another delta."""
        spec, tuning = spec_and_tuning(state.manifest)
        rows = len(state.items.segment)
        return Content(spec, tuning, None, rows, delta, tombstones, state.directory, state.directory,
                       state.manifest["files"])

    @staticmethod
    def _derived_fields(state: State, origin: dict, delta: Delta, next_id: int, labelled_change: int) -> dict:
        manifest = state.manifest
        measured_on = manifest["index"].get("recall_measured_on") or state.version
        size = len(state.items.segment) - len(delta.removed) + len(delta.metadata)
        counts = _counts(size, manifest["counts"]["dim"], next_id,
                         manifest["counts"]["labelled"] + labelled_change, delta)
        spec, _ = spec_and_tuning(manifest)
        kept = {k: manifest[k] for k in ("collection_root", "training", "registry_base", "quality") if k in manifest}
        return {**kept, "origin": origin, "counts": counts,
                "index": {**manifest["index"], "recall_measured_on": measured_on,
                          "estimated_bytes": estimate_bytes(spec, size)}}

    def _rebase_and_switch(self, version: str, carry_from: int | None, embed: Embed | None, on_step: OnStep,
                           discard: bool = False) -> str:
        """(writer lock held) Publish `version` rebased onto the current version; see publish_rebased.
        discard: delete `version` when a rebased copy replaces it (a build that was never served)."""
        current = self.current_version()
        if current is None or current == version:
            self._switch(version, on_step)
            return version
        target, now = self._state(version), self._state(current)
        plan = plan_rebase(target.items, target.tombstones, now.items, now.tombstones, carry_from)
        dim = int(target.manifest["counts"]["dim"])
        vectors, carried = np.zeros((0, dim), np.float32), []
        if plan.carried and embed is not None:
            vectors, carried = embed(target.directory, plan.carried)
        if len(carried) < len(plan.carried):
            log.warning("%d of %d images added meanwhile could not be embedded: left out of %s",
                        len(plan.carried) - len(carried), len(plan.carried), version)
        if not len(plan.removed) and not carried and plan.tombstones == target.tombstones:
            self._switch(version, on_step)
            return version
        delta = target.delta.without(plan.removed)
        if carried:
            delta = delta.with_added(unit_rows(vectors, dim), carried)
        gone = [target.items.get(int(i)) for i in plan.removed]
        next_id = max(self._next_free(target.manifest), int(now.manifest["counts"]["next_id"]))
        origin = {**target.manifest["origin"], "rebased": {"from": version, "onto": current,
                                                           "carried": len(carried), "removed": len(gone)}}
        fields = self._derived_fields(target, origin, delta, next_id, _labelled(carried) - _labelled(gone))
        fields["registry_base"] = current
        rebased = self._commit(self._derived(target, delta, plan.tombstones), fields, False, on_step)
        if discard:  # before the switch prunes: an unserved build must not count against the kept model versions
            self._discard(version)
        self._switch(rebased, on_step)
        return rebased

    def _discard(self, version: str) -> None:
        os.rename(self.versions_dir / version, self.root / f"{TRASH_PREFIX}{version}")
        fsync_dir(self.versions_dir)
        shutil.rmtree(self.root / f"{TRASH_PREFIX}{version}")

    def _next_version(self) -> str:
        return f"v{max((_seq(v) for v in self.versions()), default=0) + 1:06d}"

    def _commit(self, content: Content, fields: dict, publish: bool, on_step: OnStep) -> str:
        """Write `content` as the next version (writer lock held), and publish it if asked."""
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.root))
        try:
            written, linked = write_content(stage, content)
            version = self._next_version()
            parent = self._pointer_or_none()
            files = {**digest_files(stage, written), **{name: content.source_files[name] for name in linked}}
            manifest = seal({"format": FORMAT, "version": version, "created": utc_now(),
                             "parent": None if parent is None else parent.version, **fields,
                             "libraries": library_versions(), "files": dict(sorted(files.items()))})
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
            fsync_tree(stage, skip=linked)
            _step(on_step, "staged")
            os.rename(stage, self.versions_dir / version)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        fsync_dir(self.versions_dir)
        _step(on_step, "renamed")
        log.info("wrote version %s (%d vectors, delta %d, %s)", version, content.size, content.delta.size,
                 content.spec.factory)
        if publish:
            self._switch(version, on_step)
        return version

    def _switch(self, version: str, on_step: OnStep) -> None:
        """Point CURRENT at `version` (writer lock held), remembering the previous one; then prune.
        A damaged pointer is replaced (its history is lost)."""
        old = self._pointer_or_none()
        existing = set(self.versions())
        earlier = () if old is None else (old.version, *old.history)
        history = tuple(v for v in dict.fromkeys(earlier) if v != version and v in existing)[: self.keep]
        write_pointer(self.root, Pointer(version, history),
                      before_replace=lambda: _step(on_step, "pointer-staged"))
        _step(on_step, "switched")
        log.info("current version is now %s", version)
        self._prune(version)
        _step(on_step, "pruned")

    def _prune(self, current: str) -> None:
        """Keep the newest `keep` model versions and, apart from them, the newest `keep` update versions (never
        the current one); delete the rest: rename away, then remove."""
        by_kind: dict[VersionKind, list[str]] = {"model": [], "update": []}
        for info in self.list():
            by_kind["model" if info.kind == "model" else "update"].append(info.version)
        doomed = [v for versions in by_kind.values() for v in versions[: -self.keep] if v != current]
        for version in doomed:
            os.rename(self.versions_dir / version, self.root / f"{TRASH_PREFIX}{version}")
        if doomed:
            fsync_dir(self.versions_dir)
            log.info("pruned %s", ", ".join(doomed))
        for version in doomed:
            shutil.rmtree(self.root / f"{TRASH_PREFIX}{version}")


def since(folded: Delta, now: Delta) -> Delta:
    """The delta `now` (of the same segment) relative to a segment into which `folded` was compacted: rows added
    after `folded` or rewritten since (a move or replace keeps the id, with another row), and the ids live in the
    compacted segment that `now` no longer has or has rewritten."""
    fresh = ~np.isin(now.metadata.ids, folded.metadata.ids)  # M bool
    rewritten = []
    for row in np.flatnonzero(~fresh):
        item = now.metadata.items[row]
        was = folded.metadata.row(item.id)
        if folded.metadata.items[was] != item or not np.array_equal(folded.vectors[was], now.vectors[row]):
            fresh[row] = True
            rewritten.append(item.id)
    gone = np.union1d(np.setdiff1d(now.removed, folded.removed), np.setdiff1d(folded.metadata.ids, now.metadata.ids))
    gone = np.union1d(gone, np.asarray(rewritten, dtype=np.int64))
    items = [it for it, f in zip(now.metadata.items, fresh, strict=True) if f]
    return Delta(now.vectors[fresh], Metadata(items), gone.astype(np.int64))


def _stored_vectors(state: State, ids: np.ndarray) -> np.ndarray:
    """The stored embeddings of `ids` (M x D) in a version: delta rows, else the segment's rows (memory-mapped)."""
    segment = None
    out = []
    for i in ids:
        i = int(i)
        if i in state.delta.metadata:
            out.append(state.delta.vectors[state.delta.metadata.row(i)])
            continue
        if segment is None:
            segment = np.load(state.directory / EMBEDDINGS_FILE, mmap_mode="r")
        out.append(segment[state.items.segment.row(i)])
    return np.stack(out).astype(np.float32)


def _same_files(a: dict, b: dict, names: Iterable[str]) -> bool:
    return all(name in a["files"] and a["files"][name] == b["files"].get(name) for name in names)
