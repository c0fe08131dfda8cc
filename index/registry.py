"""The registry: which image has which id, across every version of a store.

An image's id is decided once, when it first enters the collection, and kept while it stays in it: through
retrains, re-indexes, adds, deletes and rollbacks. The registry is versioned with the store:

- a version's live items (segment metadata + delta: id, path, sha256) map path -> id and content -> id;
- `tombstones.jsonl` in each version: paths deleted from the collection, with their retired ids; a re-index
  or retrain leaves them out, an explicit add of the same path lifts the tombstone (under a new id);
- `NEXT_ID` at the store root: the high-water mark of ids ever handed out (it only grows), so an id is never
  reused, not even after a rollback to a version whose own counts.next_id is lower.

Ids for a trainer export (which names images by path, `assign_ids`):
- a path already in the collection keeps its id (a file replaced in place keeps it too);
- a tombstoned path is left out;
- a path new to the collection whose bytes (SHA-256) are those of a live item whose path is gone from the
  export takes that item's id: a file renamed or moved keeps its id. A copy (both paths present) is a new image;
- anything else gets a new id.

Between builds the same rules hold through O(delta) writes (the folder watcher, service/watch/): `add` for a new
file, `ArtifactStore.replace` for a file moved (the stored embedding kept) or replaced in place (embedded again),
both keeping the id, and `remove(tombstone=False)` for a file gone from the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from durable import atomic_write

from .delta import LiveItems
from .metadata import ItemMeta

TOMBSTONES_FILE = "tombstones.jsonl"
NEXT_ID_FILE = "NEXT_ID"


def read_tombstones(path: Path) -> dict[str, int]:
    """{path: retired id}; a version written before tombstones existed has none."""
    if not path.is_file():
        return {}
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {r["path"]: int(r["id"]) for r in rows}


def write_tombstones(path: Path, tombstones: dict[str, int]) -> None:
    with open(path, "w") as fh:  # json escapes file names that are not UTF-8 (surrogates) as \\udcXX
        for p, i in sorted(tombstones.items(), key=lambda kv: kv[1]):
            fh.write(json.dumps({"path": p, "id": i}) + "\n")


def read_next_id(root: Path) -> int:
    """The store's id high-water mark (0 when the store has none yet)."""
    try:
        return int(json.loads((root / NEXT_ID_FILE).read_text())["next_id"])
    except FileNotFoundError:
        return 0


def write_next_id(root: Path, next_id: int) -> None:
    atomic_write(root / NEXT_ID_FILE, (json.dumps({"next_id": int(next_id)}) + "\n").encode())


def assign_ids(rows: list[ItemMeta], live: LiveItems | None, tombstones: dict[str, int],
               first_new: int) -> tuple[list[ItemMeta], np.ndarray, int]:
    """Export rows (ids = row numbers) -> (kept rows under their registry ids, their row numbers, next free id)."""
    exported = {r.path for r in rows}
    claimed: set[int] = set()
    next_id = first_new
    kept, kept_rows = [], []
    for row, r in enumerate(rows):
        if r.path in tombstones:
            continue
        known = None if live is None else live.find_path(r.path)
        if known is None and live is not None and r.sha256 is not None:
            moved = live.find_sha(r.sha256)
            if moved is not None and moved.path not in exported and moved.id not in claimed:
                known = moved
        if known is not None and known.id not in claimed:
            item_id, added = known.id, known.added
        else:
            item_id, added, next_id = next_id, r.added, next_id + 1
        claimed.add(item_id)
        kept.append(replace(r, id=item_id, added=added))
        kept_rows.append(row)
    return kept, np.asarray(kept_rows, dtype=np.int64), next_id


@dataclass(frozen=True)
class Rebase:
    """How a version written from an older registry joins the current one."""

    removed: np.ndarray  # ids of the version to leave out: deleted meanwhile, or now under another id
    carried: list[ItemMeta]  # items of the current version to carry over (embedded with the version's model)
    tombstones: dict[str, int]


def plan_rebase(target: LiveItems, target_tombstones: dict[str, int], current: LiveItems,
                current_tombstones: dict[str, int], carry_from: int | None) -> Rebase:
    """Rebase `target` onto `current`: what `current` deleted stays deleted; the items `current` holds with ids
    >= carry_from that `target` lacks are carried (none when carry_from is None)."""
    tombstones = {**target_tombstones, **current_tombstones}
    def carried_instead(it: ItemMeta) -> bool:  # current holds the path under another id, and it is carried
        now = current.find_path(it.path)
        return now is not None and now.id != it.id and carry_from is not None and now.id >= carry_from

    removed = [it.id for it in target if it.path in current_tombstones or carried_instead(it)]
    gone = set(removed)
    carried = []
    if carry_from is not None:
        carried = [it for it in current if it.id >= carry_from and (it.id not in target or it.id in gone)]
    carried_paths = {it.path for it in carried}

    def lives(path: str) -> bool:
        kept = target.find_path(path)
        return path in carried_paths or (kept is not None and kept.id not in gone)

    tombstones = {p: i for p, i in tombstones.items() if not lives(p)}
    return Rebase(np.asarray(sorted(removed), dtype=np.int64), carried, tombstones)
