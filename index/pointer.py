"""The CURRENT pointer: which version is live, and the versions that were live before it (for rollback).

One small JSON file, replaced atomically: {"version": "v000007", "history": ["v000006", ...]}.
Reading it is the cheap way to notice a new version (the service polls it to hot-swap).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from durable import atomic_write

from .errors import DamagedVersionError

POINTER = "CURRENT"


@dataclass(frozen=True)
class Pointer:
    version: str
    history: tuple[str, ...] = ()  # earlier live versions, most recent first

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "history": list(self.history)}) + "\n"


def read_pointer(root: str | Path) -> Pointer | None:
    """The pointer, or None when nothing was ever published."""
    path = Path(root) / POINTER
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
        return Pointer(str(d["version"]), tuple(str(v) for v in d.get("history", ())))
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedVersionError(f"the current-version pointer {path} is unreadable ({e})") from e


def write_pointer(root: str | Path, pointer: Pointer,
                  before_replace: Callable[[], None] | None = None) -> None:
    atomic_write(Path(root) / POINTER, pointer.to_json().encode(), before_replace)
