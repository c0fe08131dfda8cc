"""The errors the index raises, each with a message fit to show a user as is."""

from __future__ import annotations


class IndexStoreError(Exception):
    """Base class: every failure of the artifact store, the builder or the searcher that a user can fix."""


class VersionNotFoundError(IndexStoreError):
    """The named version (or any current version) does not exist."""


class DamagedVersionError(IndexStoreError):
    """A version's files do not match its manifest (missing, truncated, altered), or the manifest is bad."""


class DimensionMismatchError(IndexStoreError, ValueError):
    """Query or added vectors do not have the index's dimension."""


class EmptyCollectionError(IndexStoreError, ValueError):
    """A version would hold no vectors."""


class ExportError(IndexStoreError):
    """A trainer export directory is missing files or inconsistent."""


class VersionConflictError(IndexStoreError):
    """An add/remove was based on a version that is no longer the current one."""
