"""ArtifactStore: immutable, checksummed index versions under one root, published atomically.

    <root>/CURRENT               the live version and the ones live before it (pointer.py)
    <root>/versions/v000007/     one directory per version (content.py), never modified once in place
    <root>/.lock                 held by writers (build, add, remove, publish, rollback); readers never lock
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .build import build_tuned
from .config import IndexConfig
from .content import Content, open_searcher, read_content, write_content
from .durable import fsync_dir, fsync_tree
from .errors import DamagedVersionError, IndexStoreError, VersionConflictError, VersionNotFoundError
from .export import read_export
from .manifest import FORMAT, MANIFEST, digest_files, library_versions, read_manifest, seal, verify_files
from .metadata import Metadata, NewItem, describe_items, utc_now
from .plan import choose_spec, estimate_bytes
from .pointer import POINTER, Pointer, read_pointer, write_pointer
from .search import Searcher
from .update import with_added, without

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
    """One loaded version: its searcher, and the directory holding model.pt + preprocess.json
    (embed queries with trainer.embed.Embedder.from_dir(directory))."""

    version: str
    directory: Path
    manifest: dict
    searcher: Searcher

    @property
    def dim(self) -> int:
        return self.searcher.dim


@dataclass(frozen=True)
class VersionInfo:
    version: str
    current: bool
    manifest: dict | None  # None when the manifest is damaged
    problem: str | None = None


def _counts(content: Content, next_id: int) -> dict:
    labelled = sum(it.label is not None for it in content.metadata.items)
    return {"vectors": len(content.metadata), "dim": content.spec.dim, "next_id": int(next_id),
            "labelled": labelled}


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

    def load(self, version: str | None = None, verify: bool = True, gpu: bool = False) -> LoadedVersion:
        """Load a version (default: the current one), checksums verified unless verify=False."""
        if version is not None:
            return self._load(version, verify, gpu)
        for attempt in range(LOAD_ATTEMPTS):
            current = self.current_version()
            if current is None:
                raise VersionNotFoundError(f"no version has been published in {self.root}")
            try:
                return self._load(current, verify, gpu)
            except (VersionNotFoundError, DamagedVersionError):
                if attempt + 1 == LOAD_ATTEMPTS or self.current_version() == current:
                    raise
                log.info("%s was replaced while loading it: loading the new current version", current)
        raise AssertionError("unreachable")

    def _load(self, version: str, verify: bool, gpu: bool) -> LoadedVersion:
        directory = self.directory(version)
        manifest = read_manifest(directory)
        try:
            if verify:
                verify_files(directory, manifest)
            searcher = open_searcher(directory, manifest, gpu)
        except (OSError, ValueError, KeyError, TypeError) as e:  # vanished (pruned) or unverified damage
            raise DamagedVersionError(f"{version}: cannot be loaded ({e})") from e
        return LoadedVersion(version, directory, manifest, searcher)

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
        """A new version from a trainer export (published unless publish=False). Returns its id."""
        export = read_export(export_dir)
        root = collection_root if collection_root is not None else export.meta.get("collection_root")
        items = describe_items(export.items, root, utc_now())
        spec = choose_spec(len(export.ids), export.dim, config)
        built = build_tuned(export.embeddings, export.ids, spec, config)
        content = Content(built.index, spec, built.tuning, export.embeddings, Metadata(items),
                          export.directory)
        fields = {
            "origin": {"kind": "build", "export": str(export.directory.resolve()),
                       "export_created": export.meta.get("created")},
            "collection_root": None if root is None else str(root),
            "training": {"config": export.meta.get("train_config"), "metrics": export.meta.get("metrics"),
                         "classes": export.meta.get("classes", [])},
            "counts": _counts(content, int(export.ids.max()) + 1),
            "index": {"spec": spec.to_dict(), "tuning": built.tuning.to_dict(), "recall_measured_on": None,
                      "build_seconds": round(built.seconds, 3),
                      "estimated_bytes": estimate_bytes(spec, len(export.ids)), "config": config.to_dict()},
        }
        with self._writer():
            return self._commit(content, fields, publish, on_step)

    def add(self, vectors: np.ndarray, items: Iterable[NewItem | dict], base: str, publish: bool = True,
            on_step: OnStep = None) -> tuple[str, np.ndarray]:
        """A new version: `base` plus vectors (MxD, embedded with base's own model) under new ids.

        Published only if `base` is still current (else VersionConflictError). Returns (version, ids M).
        """
        items = [it if isinstance(it, NewItem) else NewItem(**it) for it in items]
        with self._writer():
            base_content, manifest = self._base(base, publish)
            first = int(manifest["counts"]["next_id"])
            content, ids = with_added(base_content, vectors, items, first, utc_now())
            fields = self._derived_fields(manifest, base, {"kind": "add", "base": base, "ids": len(ids)},
                                          content, first + len(ids))
            return self._commit(content, fields, publish, on_step), ids

    def remove(self, ids: Iterable[int], base: str, publish: bool = True, on_step: OnStep = None) -> str:
        """A new version: `base` without the items `ids` (all must exist). Returns its id."""
        ids = np.asarray(list(ids), dtype=np.int64)
        with self._writer():
            base_content, manifest = self._base(base, publish)
            content = without(base_content, ids)
            fields = self._derived_fields(manifest, base, {"kind": "remove", "base": base, "ids": len(ids)},
                                          content, int(manifest["counts"]["next_id"]))
            return self._commit(content, fields, publish, on_step)

    def publish(self, version: str, on_step: OnStep = None) -> None:
        """Make an existing version current (after verifying every file), then prune old versions."""
        with self._writer():
            self.verify(version)
            self._switch(version, on_step)

    def rollback(self, on_step: OnStep = None) -> str:
        """Make the previously current version current again (skipping damaged or pruned ones)."""
        with self._writer():
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
            elif path.name.startswith(f".{POINTER}.tmp-"):
                path.unlink(missing_ok=True)

    def _pointer_or_none(self) -> Pointer | None:
        try:
            return read_pointer(self.root)
        except DamagedVersionError as e:
            log.warning("%s", e)
            return None

    def _base(self, base: str, publish: bool) -> tuple[Content, dict]:
        current = self.current_version()
        if publish and current != base:
            raise VersionConflictError(f"{base} is no longer the current version ({current} is): embed with "
                                       f"the current version's model and try again")
        manifest = self.verify(base)
        return read_content(self.directory(base), manifest), manifest

    @staticmethod
    def _derived_fields(manifest: dict, base: str, origin: dict, content: Content, next_id: int) -> dict:
        measured_on = manifest["index"].get("recall_measured_on") or base
        return {"origin": origin, "collection_root": manifest.get("collection_root"),
                "training": manifest.get("training"), "counts": _counts(content, next_id),
                "index": {**manifest["index"], "recall_measured_on": measured_on,
                          "estimated_bytes": estimate_bytes(content.spec, len(content.metadata))}}

    def _next_version(self) -> str:
        return f"v{max((_seq(v) for v in self.versions()), default=0) + 1:06d}"

    def _commit(self, content: Content, fields: dict, publish: bool, on_step: OnStep) -> str:
        """Write `content` as the next version (writer lock held), and publish it if asked."""
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.root))
        try:
            names = write_content(stage, content)
            version = self._next_version()
            parent = self._pointer_or_none()
            manifest = seal({"format": FORMAT, "version": version, "created": utc_now(),
                             "parent": None if parent is None else parent.version, **fields,
                             "libraries": library_versions(), "files": digest_files(stage, names)})
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
            fsync_tree(stage)
            _step(on_step, "staged")
            os.rename(stage, self.versions_dir / version)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        fsync_dir(self.versions_dir)
        _step(on_step, "renamed")
        log.info("wrote version %s (%d vectors, %s)", version, len(content.metadata), content.spec.factory)
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
        """Delete all but the newest `keep` versions (never the current one): rename away, then remove."""
        doomed = [v for v in self.versions()[: -self.keep] if v != current]
        for version in doomed:
            os.rename(self.versions_dir / version, self.root / f"{TRASH_PREFIX}{version}")
        if doomed:
            fsync_dir(self.versions_dir)
            log.info("pruned %s", ", ".join(doomed))
        for version in doomed:
            shutil.rmtree(self.root / f"{TRASH_PREFIX}{version}")
