"""A version's manifest: what it is, where it came from, and a checksum of every file, itself sealed.

The manifest carries `manifest_sha256`, the SHA-256 of its own canonical JSON without that field, so a
damaged manifest is detected like any other damaged file.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Literal

from durable import sha256_file

from .errors import DamagedVersionError

# where a version came from (manifest "origin.kind"), and the kind of version that makes it (retention keeps
# the newest `keep` of each kind apart); a version whose manifest fails its seal is listed as "damaged"
OriginKind = Literal["build", "add", "remove", "move", "replace", "compact"]
VersionKind = Literal["model", "update"]
ListedKind = Literal[VersionKind, "damaged"]

MANIFEST = "manifest.json"
FORMAT = 1
SEAL = "manifest_sha256"
LIBRARIES = ("numpy", "faiss-cpu", "faiss-gpu", "torch", "torchvision", "pillow")


def version_kind(manifest: dict) -> VersionKind:
    """"model" for a version holding a (re)trained or re-indexed collection, "update" for add, remove, move,
    replace and compact."""
    return "model" if manifest["origin"]["kind"] == "build" else "update"


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def digest_files(directory: str | Path, names: list[str]) -> dict[str, dict]:
    directory = Path(directory)
    return {name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
            for name in sorted(names)}


def _canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def seal(manifest: dict) -> dict:
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return {**body, SEAL: hashlib.sha256(_canonical(body)).hexdigest()}


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a version directory, its seal checked; DamagedVersionError otherwise."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DamagedVersionError(f"{Path(directory).name}: {MANIFEST} is missing") from e
    except (ValueError, OSError) as e:
        raise DamagedVersionError(f"{Path(directory).name}: {MANIFEST} is unreadable ({e})") from e
    if not isinstance(manifest, dict) or seal(manifest).get(SEAL) != manifest.get(SEAL):
        raise DamagedVersionError(f"{Path(directory).name}: {MANIFEST} does not match its checksum")
    if manifest.get("format") != FORMAT:
        raise DamagedVersionError(f"{Path(directory).name}: unknown manifest format "
                                  f"{manifest.get('format')!r}")
    return manifest


def verify_files(directory: str | Path, manifest: dict, skip: tuple[str, ...] = ()) -> None:
    """Every file listed in the manifest (but those in `skip`) exists with its recorded size and SHA-256."""
    directory = Path(directory)
    for name, want in manifest["files"].items():
        if name in skip:
            continue
        path = directory / name
        if not path.is_file():
            raise DamagedVersionError(f"{directory.name}: {name} is missing")
        if path.stat().st_size != want["bytes"]:
            raise DamagedVersionError(f"{directory.name}: {name} has {path.stat().st_size} bytes, "
                                      f"the manifest records {want['bytes']}")
        if sha256_file(path) != want["sha256"]:
            raise DamagedVersionError(f"{directory.name}: {name} does not match its checksum")
