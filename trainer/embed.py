"""Embedding images with a trained encoder, and the export the index consumes.

Export directory (format version 1; see docs/export-format.md):
    embeddings.npy    float32 [N, D], L2-normalised rows
    ids.npy           int64 [N], the instance ids (row i <-> ids[i])
    items.jsonl       one {"id", "path", "label"} per row (path relative to the collection root)
    model.pt          {"model_config": {...}, "state_dict": encoder weights}
    preprocess.json   the eval transform (Preprocess), the exact recipe to embed a new image
    export.json       {"format", "n", "dim", "collection_root", "classes", "train_config", "metrics", ...}
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from durable import fsync_tree

from .data import ArrayImages, ImageFolder
from .model import Encoder, build_encoder
from .preprocess import Preprocess
from .progress import Tick

EXPORT_FORMAT = 1


def model_config(arch: str, dim: int, image_size: int, width: int, stem: str = "auto") -> dict:
    return {"arch": arch, "dim": dim, "image_size": image_size, "width": width, "stem": stem}


def save_model(encoder: Encoder, config: dict, path: str | Path) -> None:
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    torch.save({"model_config": config, "state_dict": state}, path)


def load_model_and_config(path: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """The encoder saved by save_model, in eval mode on `device`, and its model_config."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = blob["model_config"]
    encoder = build_encoder(cfg["arch"], cfg["dim"], cfg["image_size"], cfg.get("width", 64), cfg.get("stem", "auto"))
    encoder.load_state_dict(blob["state_dict"])
    return encoder.to(device).eval(), cfg


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    return load_model_and_config(path, device)[0]


class Embedder:
    """encoder + preprocessing: PIL images (already RGB, see data.load_rgb) -> unit embeddings."""

    def __init__(self, encoder: Encoder, pre: Preprocess, device: str | torch.device = "cpu"):
        self.encoder = encoder.to(device).eval()
        self.pre = pre
        self.device = torch.device(device)
        self.transform = pre.eval_transform()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu") -> Embedder:
        directory = Path(directory)
        return cls(load_model(directory / "model.pt", device), Preprocess.load(directory / "preprocess.json"),
                   device)

    @torch.no_grad()
    def embed_tensors(self, x: torch.Tensor) -> np.ndarray:
        """x: Bx3xSxS normalised -> B x D float32 unit rows."""
        return self.encoder(x.to(self.device)).float().cpu().numpy()

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([self.transform(im) for im in images]))


@torch.no_grad()
def embed_dataset(encoder: Encoder, ds: ImageFolder | ArrayImages, pre: Preprocess, device,
                  batch_size: int = 256, workers: int = 0, progress: bool = True,
                  tick: Tick | None = None) -> torch.Tensor:
    """Embeddings of every instance with the eval transform -> N x D float32 on `device`; `tick` per batch."""
    encoder.eval()
    tick = tick or (lambda done, total: None)
    out = []
    if isinstance(ds, ArrayImages) and ds.images.shape[1:3] == (pre.stored_size, pre.stored_size):  # no PIL
        for i in tqdm(range(0, len(ds), batch_size), desc="embedding", disable=not progress, leave=False):
            batch = torch.from_numpy(np.array(ds.images[i:i + batch_size])).to(device)  # b x S x S x 3 uint8
            out.append(encoder(pre.device_eval(batch)).float())  # equals the PIL eval transform
            tick(min(i + batch_size, len(ds)), len(ds))
        return torch.cat(out)
    ds.transform = pre.eval_transform()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    for x, _ in tqdm(loader, desc="embedding", disable=not progress, leave=False):
        out.append(encoder(x.to(device)).float())
        tick(sum(len(f) for f in out), len(ds))
    return torch.cat(out)


def write_export(directory: str | Path, embeddings: np.ndarray, ds: ImageFolder | ArrayImages,
                 encoder: Encoder, model_cfg: dict, pre: Preprocess, extra: dict) -> Path:
    """Write the export atomically: a temporary sibling directory renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        coll = ds.collection
        n = len(coll)
        assert embeddings.shape[0] == n, (embeddings.shape, n)
        np.save(tmp / "embeddings.npy", embeddings.astype(np.float32))
        np.save(tmp / "ids.npy", np.arange(n, dtype=np.int64))
        with open(tmp / "items.jsonl", "w") as fh:
            for i, path in enumerate(coll.paths):
                label = None if coll.labels is None else coll.classes[int(coll.labels[i])]
                fh.write(json.dumps({"id": i, "path": path, "label": label}) + "\n")
        save_model(encoder, model_cfg, tmp / "model.pt")
        pre.save(tmp / "preprocess.json")
        root = str(Path(ds.root).resolve()) if getattr(ds, "root", None) else None
        meta = {"format": EXPORT_FORMAT, "n": n, "dim": int(embeddings.shape[1]), "collection_root": root,
                "classes": coll.classes, "skipped": [p for p, _ in ds.skipped],
                "skipped_reasons": dict(ds.skipped),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2))
        fsync_tree(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
