"""One served version: an index version's Searcher together with the Embedder built from the same version's
model.pt + preprocess.json, so a query is always embedded by the model that embedded the collection it is
searched against. Read-only once loaded; `validate()` refuses a version that cannot serve."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from index import ItemMeta, LoadedVersion, display_path
from trainer.embed import Embedder

from .scores import ScoreScale

PROBE_GREY = 128  # pixel value of the probe image every new version must embed and search


class VersionRefused(RuntimeError):
    """A version could not be loaded or failed validation; the previous one (if any) keeps serving."""


@dataclass(frozen=True, slots=True)
class Neighbour:
    id: int
    score: float
    path: str
    label: str | None


def _neighbour(hit) -> Neighbour:
    label = hit.item.label  # a first-level folder name: as little UTF-8 as any path
    return Neighbour(hit.id, hit.score, display_path(hit.item.path), None if label is None else display_path(label))


class LiveVersion:
    """A loaded version: searcher + embedder + when it went live. Read-only, shared by all requests."""

    def __init__(self, loaded: LoadedVersion, embedder: Embedder, score_scale: ScoreScale | None = None):
        """score_scale: the previous version's, when this one shares its model and base segment (an add)."""
        self.loaded = loaded
        self.version = loaded.version
        self.directory = loaded.directory
        self.manifest = loaded.manifest
        self.searcher = loaded.searcher
        self.embedder = embedder
        # cosines of random pairs of this version's images: a hit's cosine -> percentile (service/live/scores.py)
        self.score_scale = score_scale or ScoreScale.of_vectors(self.searcher.vectors)
        self.loaded_at = datetime.now(timezone.utc)

    @property
    def size(self) -> int:
        return self.searcher.ntotal

    @property
    def dim(self) -> int:
        return self.searcher.dim

    @property
    def model_digest(self) -> tuple[str, str]:
        """Checksums of model.pt and preprocess.json: equal digests, same embedder."""
        files = self.manifest["files"]
        return files["model.pt"]["sha256"], files["preprocess.json"]["sha256"]

    @property
    def delta_size(self) -> int:
        return self.searcher.delta.size

    @property
    def quality(self) -> dict | None:
        return self.manifest.get("quality")

    @property
    def knn(self) -> dict | None:
        return ((self.manifest.get("training") or {}).get("metrics") or {}).get("knn")

    def item(self, image_id: int) -> ItemMeta | None:
        metadata = self.searcher.metadata
        return metadata.get(image_id) if image_id in metadata else None

    def find_sha(self, sha256: str) -> ItemMeta | None:
        """The image with these bytes, if the collection holds it."""
        return self.searcher.metadata.find_sha(sha256)

    def embed(self, image: Image.Image) -> np.ndarray:
        return self.embedder.embed([image])  # 1 x D

    def query(self, image: Image.Image, k: int, min_score: float | None) -> tuple[list[Neighbour], dict]:
        """Neighbours of a decoded RGB image, and the seconds of each stage {"embed", "search"}."""
        t0 = time.perf_counter()
        vector = self.embed(image)
        t1 = time.perf_counter()
        hits = self.searcher.search(vector, k, min_score)[0]
        t2 = time.perf_counter()
        return [_neighbour(h) for h in hits], {"embed": t1 - t0, "search": t2 - t1}

    def similar(self, image_id: int, k: int, min_score: float | None) -> list[Neighbour]:
        """Neighbours of a collection image by its stored embedding, the image itself left out."""
        hits = self.searcher.search(self.searcher.vector(image_id), min(k + 1, self.size), min_score)[0]
        return [_neighbour(h) for h in hits if h.id != image_id][:k]

    def validate(self) -> None:
        """Refuse a version whose model and index cannot work together; raises ValueError."""
        if self.embedder.dim != self.searcher.dim:
            raise ValueError(f"model embeds in {self.embedder.dim} dimensions, the index holds "
                             f"{self.searcher.dim}")
        if self.size == 0:
            raise ValueError("the index is empty")
        side = self.embedder.pre.image_size
        probe = self.embed(Image.new("RGB", (side, side), (PROBE_GREY,) * 3))  # 1 x D
        if probe.shape != (1, self.dim) or not np.isfinite(probe).all():
            raise ValueError("the model returns non-finite embeddings")
        if abs(float(np.linalg.norm(probe)) - 1.0) > 1e-3:
            raise ValueError("the model's embeddings are not unit vectors")
        hits = self.searcher.search(probe, 1)[0]
        if not hits or not np.isfinite(hits[0].score):
            raise ValueError("the index answers no neighbour for a probe query")
