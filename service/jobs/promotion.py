"""The promotion gate: a new version goes live only when its label-free quality is not worse than the live one's.

Both figures are `trainer.quality` measured on the same gallery (the collection the candidate was trained
and embedded on), the same seeded sample and the same seeded views. The live version's stored figure is
reused when it was measured on exactly that (equal `key`); otherwise (the collection changed since it was
published) the live model re-embeds the candidate's collection and is measured again.

`"publish": "always"` in the job's request skips the gate; a gated version is built (not published) and
can be published later by hand (`npid index publish VERSION`, or POST /versions/VERSION/publish).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from index import ArtifactStore, LoadedVersion
from trainer.data import Collection, ImageFolder
from trainer.embed import embed_dataset, load_model_and_config
from trainer.preprocess import Preprocess
from trainer.progress import Tick
from trainer.quality import GATE_FIGURE, load_sample, measure, sample_ids, sample_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str


def decide(candidate: dict, live: dict | None, mode: str, margin: float = 0.0) -> Decision:
    """Publish or keep the live version. candidate/live: quality dicts; mode: "if_better" | "always".

    margin: points of GATE_FIGURE the candidate must gain (0 for a job someone asked for: not worse is
    enough; the background trainer asks for a real gain before it replaces what people are using).
    """
    if mode == "always":
        return Decision(True, "published on request (publish: always)")
    if live is None:
        return Decision(True, "no live version to compare with")
    new, old = candidate[GATE_FIGURE], live[GATE_FIGURE]
    if new >= old + margin:
        return Decision(True, f"{GATE_FIGURE} {new:.2f} >= live {old:.2f}" + (f" + {margin:g}" if margin else ""))
    return Decision(False, f"{GATE_FIGURE} {new:.2f} < live {old:.2f}" + (f" + {margin:g}" if margin else "")
                    + ": kept the live version")


def measure_model(encoder, pre: Preprocess, gallery: np.ndarray, ds: ImageFolder, device, hflip: bool) -> dict:
    """Quality of (encoder, its embeddings of ds) on the fixed sample of ds, with views flipped or not as the
    candidate was trained (`TrainConfig.flip`); adds the key of the sample and views."""
    ids = sample_ids(len(ds))
    images = load_sample(ds, ids, pre)
    figures = measure(encoder, images, ids, torch.from_numpy(gallery).to(device), pre, hflip=hflip)
    return {**figures, "key": sample_key(ds.collection.paths, ids, figures["seed"], hflip)}


def export_quality(export_dir: Path, ds: ImageFolder, device, hflip: bool) -> dict:
    """Quality of a fresh export: its model, its embeddings, the collection it was trained on."""
    encoder, _ = load_model_and_config(export_dir / "model.pt", device)
    pre = Preprocess.load(export_dir / "preprocess.json")
    return measure_model(encoder, pre, np.load(export_dir / "embeddings.npy"), ds, device, hflip)


def live_quality(live: LoadedVersion, ds: ImageFolder, key: str, device, hflip: bool,
                 tick: Tick | None = None) -> dict | None:
    """The live version's quality on the candidate's gallery, sample and views (`key`, `hflip`), or None when
    not comparable."""
    stored = live.manifest.get("quality")
    if stored and stored.get("key") == key:
        return stored
    try:
        encoder, _ = load_model_and_config(live.directory / "model.pt", device)
        pre = Preprocess.load(live.directory / "preprocess.json")
    except (OSError, KeyError, RuntimeError) as e:  # an old or damaged version: nothing to compare with
        log.warning("live version %s cannot be measured: %s", live.version, e)
        return None
    gallery = embed_dataset(encoder, ds, pre, device, progress=False, tick=tick).cpu().numpy()  # N x D
    figures = measure_model(encoder, pre, gallery, ds, device, hflip)
    return {**figures, "version": live.version, "remeasured": True}


def exported_collection(export_dir: Path, root: Path) -> ImageFolder:
    """The images an export embedded, in its row order: uploads made since and skipped files are not in it, so
    a sample of its rows is a sample of its gallery."""
    with open(export_dir / "items.jsonl") as fh:
        paths = [json.loads(line)["path"] for line in fh]
    return ImageFolder(root, collection=Collection(paths, None))


def current_version(store: ArtifactStore) -> LoadedVersion | None:
    return store.load(verify=False) if store.current_version() else None
