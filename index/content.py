"""What a version directory holds, and moving it between files and memory.

    manifest.json     what it is, where it came from, checksums (manifest.py)
    index.faiss       the base segment's FAISS index (faiss.write_index), ids = item ids   }  the base segment,
    embeddings.npy    float32 [N, D] unit rows, in metadata row order (search by id)     }  hard-linked between
    metadata.jsonl    one ItemMeta per row (metadata.py)                                 }  versions sharing it
    delta.npy, delta.jsonl, removed.npy   what was added and removed since (delta.py)
    tombstones.jsonl  the registry's deleted paths and their retired ids (registry.py)
    model.pt          the encoder, as exported by the trainer  } everything needed to embed a query
    preprocess.json   its eval transform                       } exactly as the collection was embedded
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from durable import link_or_copy

from .delta import DELTA_FILES, Delta
from .errors import DamagedVersionError
from .export import MODEL_FILES
from .metadata import Metadata
from .plan import IndexSpec
from .registry import TOMBSTONES_FILE, read_tombstones, write_tombstones
from .search import Searcher
from .tune import Tuning

INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
METADATA_FILE = "metadata.jsonl"
SEGMENT_FILES = (INDEX_FILE, EMBEDDINGS_FILE, METADATA_FILE)
DATA_FILES = (*SEGMENT_FILES, *DELTA_FILES, TOMBSTONES_FILE, *MODEL_FILES)


@dataclass
class Segment:
    """A base segment in memory: the FAISS index holding exactly metadata.ids, and their vectors."""

    index: faiss.Index
    embeddings: np.ndarray  # N x D float32, row i is metadata.items[i]
    metadata: Metadata


@dataclass
class Content:
    """A version's data before it is written: a new segment, or the one of `source` hard-linked; a delta."""

    spec: IndexSpec
    tuning: Tuning
    segment: Segment | None  # None: link the segment files of `source`
    segment_rows: int  # rows of the segment (new or linked)
    delta: Delta
    tombstones: dict[str, int]
    model_dir: Path  # the directory model.pt and preprocess.json are taken from
    source: Path | None = None  # a version of this store to hard-link from (its segment, its model)
    source_files: dict | None = None  # that version's manifest "files": the linked files' digests

    @property
    def size(self) -> int:
        """Items in the collection."""
        return self.segment_rows - len(self.delta.removed) + len(self.delta.metadata)


def write_content(stage: Path, content: Content) -> tuple[list[str], list[str]]:
    """Write the data files into `stage` (not yet durable: the caller fsyncs). Returns (written, linked) names;
    linked files keep the digests of `content.source_files`."""
    written, linked = [], []
    if content.segment is None:
        for name in SEGMENT_FILES:  # versions are immutable: they can share these files
            link_or_copy(content.source / name, stage / name)
        linked += SEGMENT_FILES
    else:
        faiss.write_index(content.segment.index, str(stage / INDEX_FILE))
        np.save(stage / EMBEDDINGS_FILE, np.ascontiguousarray(content.segment.embeddings, dtype=np.float32))
        content.segment.metadata.write(stage / METADATA_FILE)
        written += SEGMENT_FILES
    written += content.delta.write(stage)
    write_tombstones(stage / TOMBSTONES_FILE, content.tombstones)
    written.append(TOMBSTONES_FILE)
    for name in MODEL_FILES:
        if content.source is not None and content.model_dir == content.source:
            link_or_copy(content.model_dir / name, stage / name)
            linked.append(name)
        else:  # an export is not ours: an edit there must not reach into the store
            shutil.copyfile(content.model_dir / name, stage / name)
            written.append(name)
    return written, linked


def spec_and_tuning(manifest: dict) -> tuple[IndexSpec, Tuning]:
    return IndexSpec.from_dict(manifest["index"]["spec"]), Tuning.from_dict(manifest["index"]["tuning"])


def _read_index(directory: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(directory / INDEX_FILE))
    except RuntimeError as e:
        raise DamagedVersionError(f"{directory.name}: {INDEX_FILE} is unreadable "
                                  f"({str(e).splitlines()[0]})") from e


def read_delta(directory: Path, manifest: dict) -> Delta:
    return Delta.read(directory, int(manifest["counts"]["dim"]))


def open_searcher(directory: Path, manifest: dict, gpu: bool = False) -> Searcher:
    """A Searcher over a version directory (segment embeddings memory-mapped)."""
    spec, tuning = spec_and_tuning(manifest)
    metadata = Metadata.read(directory / METADATA_FILE)
    vectors = np.load(directory / EMBEDDINGS_FILE, mmap_mode="r")  # N x D
    return Searcher(_read_index(directory), spec, tuning.value, metadata, vectors, gpu,
                    delta=read_delta(directory, manifest))


def read_tombstones_of(directory: Path) -> dict[str, int]:
    return read_tombstones(directory / TOMBSTONES_FILE)


def read_segment(directory: Path) -> Segment:
    """A private, mutable copy of a version's segment (compaction edits its index)."""
    return Segment(_read_index(directory), np.load(directory / EMBEDDINGS_FILE),
                   Metadata.read(directory / METADATA_FILE))
