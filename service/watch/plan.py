"""Settled files against the live version: what to change in the index, decided by the registry's rules
(docs/index-artifacts.md, "Stable ids").

| the file | in the index |
| --- | --- |
| at an indexed path, the same bytes (SHA-256) | nothing to do |
| at an indexed path, other bytes (replaced in place) | re-embedded under the same id: the id follows the path |
| at a new path, the bytes of an indexed image whose file is gone (renamed or moved) | moved: same id, same embedding |
| at a tombstoned path (deleted through the API) | left out |
| at a new path in the API's upload places, bytes already indexed | left out (the API's own write, or a repeat) |
| at any other new path (a copy included) | added under a new id |
| gone from an indexed path, not moved | removed, the path not tombstoned |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from index import ItemMeta

from .folder import Stat


@dataclass(frozen=True)
class Found:
    """A settled file as read: where, its stat when hashed, its bytes' SHA-256."""

    path: str
    stat: Stat
    sha256: str


@dataclass
class Plan:
    moves: list[tuple[ItemMeta, Found]] = field(default_factory=list)  # (indexed image, where its bytes now are)
    replaces: list[tuple[ItemMeta, Found]] = field(default_factory=list)  # (indexed image, its new bytes)
    adds: list[Found] = field(default_factory=list)
    removes: list[ItemMeta] = field(default_factory=list)
    same: list[Found] = field(default_factory=list)  # indexed as they are
    left_out: list[Found] = field(default_factory=list)  # tombstoned, or bytes the API already indexed


def make_plan(files: dict[str, Found | None], items, tombstones: dict[str, int], is_api_write: Callable[[str], bool],
              exists: Callable[[str], bool]) -> Plan:
    """files: settled path -> the file read there, or None where there is none. items: the live version's LiveItems
    (find_path, find_sha); exists(path): whether an indexed path not among `files` still has its file."""
    plan = Plan()
    gone: dict[str, list[ItemMeta]] = {}  # sha256 -> indexed images whose files left their paths
    newcomers: list[Found] = []
    for path, found in sorted(files.items()):
        item = items.find_path(path)
        if found is None:
            if item is not None:
                gone.setdefault(item.sha256 or "", []).append(item)
        elif item is None:
            (plan.left_out if path in tombstones else newcomers).append(found)
        elif item.sha256 == found.sha256:
            plan.same.append(found)
        else:
            plan.replaces.append((item, found))
    moved: set[int] = set()
    for found in newcomers:
        if gone.get(found.sha256):
            item = gone[found.sha256].pop(0)
        else:
            item = items.find_sha(found.sha256)
            if item is not None and (item.id in moved or item.path in files or exists(item.path)):
                if is_api_write(found.path):  # bytes already in the collection: not added twice
                    plan.left_out.append(found)
                    continue
                item = None  # a copy of a file still there: a new image
        if item is None:
            plan.adds.append(found)
        else:
            plan.moves.append((item, found))
            moved.add(item.id)
    plan.removes = [item for items_gone in gone.values() for item in items_gone]
    return plan
