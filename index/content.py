"""What a version directory holds, and moving it between files and memory.

    manifest.json     what it is, where it came from, checksums (manifest.py)
    index.faiss       the FAISS index (faiss.write_index), ids = item ids
    embeddings.npy    float32 [N, D] unit rows, in metadata row order (search by id, rebuilds)
    metadata.jsonl    one ItemMeta per row (metadata.py)
    model.pt          the encoder, as exported by the trainer  } everything needed to embed a query
    preprocess.json   its eval transform                       } exactly as the collection was embedded
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .durable import link_or_copy
from .errors import DamagedVersionError
from .export import MODEL_FILES
from .metadata import Metadata
from .plan import IndexSpec
from .search import Searcher
from .tune import Tuning

INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
METADATA_FILE = "metadata.jsonl"
DATA_FILES = (INDEX_FILE, EMBEDDINGS_FILE, METADATA_FILE, *MODEL_FILES)


@dataclass
class Content:
    """A version's data in memory, before it is written or after it is read for an update."""

    index: faiss.Index  # holds exactly metadata.ids
    spec: IndexSpec
    tuning: Tuning
    embeddings: np.ndarray  # N x D float32, row i is metadata.items[i]
    metadata: Metadata
    model_dir: Path  # the directory model.pt and preprocess.json are taken from
    link_model: bool = False  # hard-link them (model_dir is a version of the same store) instead of copying


def write_content(stage: Path, content: Content) -> list[str]:
    """Write the data files into `stage` (not yet durable: the caller fsyncs). Returns their names."""
    faiss.write_index(content.index, str(stage / INDEX_FILE))
    np.save(stage / EMBEDDINGS_FILE, np.ascontiguousarray(content.embeddings, dtype=np.float32))
    content.metadata.write(stage / METADATA_FILE)
    for name in MODEL_FILES:
        if content.link_model:  # versions are immutable: they can share these files
            link_or_copy(content.model_dir / name, stage / name)
        else:  # an export is not ours: an edit there must not reach into the store
            shutil.copyfile(content.model_dir / name, stage / name)
    return list(DATA_FILES)


def _spec_and_tuning(manifest: dict) -> tuple[IndexSpec, Tuning]:
    return IndexSpec.from_dict(manifest["index"]["spec"]), Tuning.from_dict(manifest["index"]["tuning"])


def _read_index(directory: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(directory / INDEX_FILE))
    except RuntimeError as e:
        raise DamagedVersionError(f"{directory.name}: {INDEX_FILE} is unreadable "
                                  f"({str(e).splitlines()[0]})") from e


def open_searcher(directory: Path, manifest: dict, gpu: bool = False) -> Searcher:
    """A Searcher over a version directory (embeddings memory-mapped)."""
    spec, tuning = _spec_and_tuning(manifest)
    metadata = Metadata.read(directory / METADATA_FILE)
    vectors = np.load(directory / EMBEDDINGS_FILE, mmap_mode="r")  # N x D
    return Searcher(_read_index(directory), spec, tuning.value, metadata, vectors, gpu)


def read_content(directory: Path, manifest: dict) -> Content:
    """A private, mutable copy of a version's data, to derive the next version from."""
    spec, tuning = _spec_and_tuning(manifest)
    return Content(_read_index(directory), spec, tuning, np.load(directory / EMBEDDINGS_FILE),
                   Metadata.read(directory / METADATA_FILE), directory, link_model=True)
