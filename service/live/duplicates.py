"""Near-duplicate groups of the served version (GET /duplicates), cached so that paging is cheap.

The maths is the index's (index/duplicates.py: an exact k-NN graph over the stored embeddings, links at or above
a threshold, connected components). This module keeps, in the API process:

- the k-NN graph of each base segment (the O(N^2 D) part), for as long as a loaded version links that segment:
  a version made by an add or a delete derives its graph from it in O(delta x N);
- the live graph of the last few versions, and the groups of the last few (version, threshold) pairs;
- the default threshold of each model: the one calibrated at publish (the manifest's quality), else measured
  here once (`estimate_threshold`: copies of a seeded sample of the collection's files, embedded with the
  version's own model, against each sampled image's nearest other image; trainer/quality.py's measure).

One computation runs at a time (a lock); requests asking for the same answer meanwhile wait for it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from index import LoadedVersion, Searcher
from index.duplicates import Group, KnnGraph, default_threshold, duplicate_groups, live_graph, segment_knn
from trainer.data import load_rgb
from trainer.embed import Embedder
from trainer.quality import copy_views, duplicate_figures, sample_ids

from .collection import ImageFileMissing, resolve
from .version import LiveVersion

log = logging.getLogger(__name__)

ESTIMATE_SAMPLE = 200  # images whose copies estimate the threshold of a version published without one
ESTIMATE_MIN = 8  # readable images needed for an estimate (fewer: the nearest-neighbour fallback)
ESTIMATE_SEED = 0
EMBED_BATCH = 64
GRAPHS_KEPT = 2  # live graphs (versions) kept
GROUPS_KEPT = 16  # (version, threshold) answers kept


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # request | calibrated | estimated | nearest


@dataclass(frozen=True)
class Groups:
    version: str
    threshold: Threshold
    groups: list[Group]
    images: int  # images in some group


def estimate_threshold(searcher: Searcher, embedder: Embedder, root: Path, graph: KnnGraph,
                       size: int = ESTIMATE_SAMPLE, seed: int = ESTIMATE_SEED) -> dict | None:
    """trainer.quality's duplicate figures measured now: a seeded copy of each of up to `size` sampled images
    (read from the collection folder, fitted as the image cache stores them), embedded with the version's model,
    against its stored embedding; each sampled image's nearest other image from `graph`. None when fewer than
    ESTIMATE_MIN files can be read."""
    rows = sample_ids(graph.size, size, seed)
    pre = embedder.pre
    squares, kept = [], []
    for row in rows:
        item = searcher.metadata.get(int(graph.ids[row]))
        try:
            squares.append(pre.fit(load_rgb(resolve(root, item.path), draft=(pre.resize, pre.resize))))
        except (ImageFileMissing, OSError, ValueError, Image.DecompressionBombError) as e:
            log.debug("duplicate threshold: skipping %s: %s", item.path, e)
            continue
        kept.append(row)
    if len(kept) < ESTIMATE_MIN:
        return None
    views = copy_views(squares, seed)
    with torch.inference_mode():
        copies = np.concatenate([embedder.embed(views[i:i + EMBED_BATCH]) for i in range(0, len(views), EMBED_BATCH)])
    own = np.stack([searcher.vector(int(graph.ids[row])) for row in kept])  # S x D stored embeddings
    nearest = graph.nearest()[kept]
    finite = np.isfinite(nearest)
    if not finite.any():
        return None
    return duplicate_figures(np.sum(copies * own, axis=1), nearest[finite])


class Duplicates:
    """The API process's duplicate groups and their caches (see the module docstring)."""

    def __init__(self, collection_root: Path):
        self.root = Path(collection_root)
        self._lock = threading.Lock()
        self._segments: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # segment Metadata -> its k-NN
        self._graphs: OrderedDict[str, KnnGraph] = OrderedDict()
        self._groups: OrderedDict[tuple[str, float], Groups] = OrderedDict()
        self._defaults: dict[tuple[str, str], Threshold] = {}  # model digest -> default threshold

    def groups(self, live: LiveVersion, threshold: float | None = None) -> Groups:
        """The groups of the live version at `threshold` (None: its default), computed once per (version,
        threshold). Blocking: call it in a thread."""
        with self._lock:
            chosen = Threshold(threshold, "request") if threshold is not None else self._default(live)
            key = (live.version, chosen.value)
            if (found := self._groups.get(key)) is not None:
                self._groups.move_to_end(key)
                return Groups(found.version, chosen, found.groups, found.images)
            groups = duplicate_groups(self._graph(live), chosen.value)
            answer = Groups(live.version, chosen, groups, sum(g.size for g in groups))
            self._groups[key] = answer
            while len(self._groups) > GROUPS_KEPT:
                self._groups.popitem(last=False)
            return answer

    def _graph(self, live: LiveVersion) -> KnnGraph:
        if (graph := self._graphs.get(live.version)) is not None:
            self._graphs.move_to_end(live.version)
            return graph
        searcher = live.searcher
        segment = self._segments.get(searcher.segment)
        if segment is None:
            log.info("duplicates: k-NN graph of the %d images of %s's segment", len(searcher.segment), live.version)
            segment = segment_knn(searcher.vectors)
            self._segments[searcher.segment] = segment
        graph = live_graph(searcher, segment=segment)
        self._graphs[live.version] = graph
        while len(self._graphs) > GRAPHS_KEPT:
            self._graphs.popitem(last=False)
        return graph

    def _default(self, live: LiveVersion) -> Threshold:
        key = live.model_digest
        if (found := self._defaults.get(key)) is not None:
            return found
        graph = self._graph(live)
        value, source = default_threshold(live.manifest, graph,
                                          lambda: estimate_threshold(live.searcher, live.embedder, self.root, graph))
        if source != "calibrated":
            log.info("duplicates: %s has no calibrated threshold; %s %.4f", live.version, source, value)
        self._defaults = {key: Threshold(value, source)}  # the live model's only
        return self._defaults[key]


def estimate_for_version(loaded: LoadedVersion, graph: KnnGraph) -> dict | None:
    """`estimate_threshold` of a stored version (`npid duplicates`): its model, the collection folder its
    manifest names; None when it names none or the model cannot be loaded."""
    root = loaded.manifest.get("collection_root")
    if not root:
        return None
    try:
        embedder = Embedder.from_dir(loaded.directory)
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        log.warning("cannot load the model of %s: %s", loaded.version, e)
        return None
    return estimate_threshold(loaded.searcher, embedder, Path(root).resolve(), graph)
