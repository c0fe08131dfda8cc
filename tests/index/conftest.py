"""Fixtures for the index tests: synthetic vectors, trainer exports written file by file, and one real
export of an image folder embedded by a tiny real encoder (for search by image)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MODEL_DIM = 16  # the tiny encoder: resnet18, width 8, 32 px input, 16-d embeddings


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Vectors:
    """Synthetic unit vectors (a fixture: test modules cannot import conftest under --import-mode=importlib)."""

    @staticmethod
    def random(n: int, d: int, seed: int = 0) -> np.ndarray:
        return unit(np.random.default_rng(seed).standard_normal((n, d)))

    @staticmethod
    def clustered(n: int, d: int, clusters: int = 50, spread: float = 1.0, seed: int = 0,
                  centre_seed: int = 123) -> np.ndarray:
        """Unit vectors around `clusters` random centres (the same centres for every call with centre_seed)."""
        centres = Vectors.random(clusters, d, centre_seed)  # C x D
        rng = np.random.default_rng(seed)
        x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)) / np.sqrt(d)  # N x D
        return unit(x)


@pytest.fixture(scope="session")
def vectors() -> type[Vectors]:
    return Vectors


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> Path:
    """A directory with a real model.pt and preprocess.json of the tiny encoder (random init)."""
    import torch

    from trainer.data import CIFAR10_MEAN, CIFAR10_STD
    from trainer.embed import model_config, save_model
    from trainer.model import build_encoder
    from trainer.preprocess import Preprocess

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    save_model(build_encoder("resnet18", MODEL_DIM, 32, width=8), model_config("resnet18", MODEL_DIM, 32, 8),
               directory / "model.pt")
    Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD).save(directory / "preprocess.json")
    return directory


@pytest.fixture
def make_export(tmp_path, model_files):
    """make_export(vectors, name=..., ids=..., labels=..., prefix=...) -> an export directory (format 1)."""

    def make(vectors: np.ndarray, name: str = "export", ids: np.ndarray | None = None,
             labels: list | None = None, prefix: str = "img", collection_root: str | None = None) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        n = len(vectors)
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        np.save(directory / "embeddings.npy", np.asarray(vectors, dtype=np.float32))
        np.save(directory / "ids.npy", ids)
        with open(directory / "items.jsonl", "w") as fh:
            for row, i in enumerate(ids):
                label = None if labels is None else labels[row]
                fh.write(json.dumps({"id": int(i), "path": f"{prefix}/{int(i):06d}.png", "label": label}) + "\n")
        for f in ("model.pt", "preprocess.json"):
            shutil.copy(model_files / f, directory / f)
        meta = {"format": 1, "n": n, "dim": int(np.shape(vectors)[1]),
                "collection_root": collection_root, "classes": sorted({str(x) for x in labels or []}),
                "skipped": [], "created": "2026-01-01T00:00:00Z", "train_config": {"epochs": 3, "arch": "resnet18"},
                "metrics": {"knn_top1": 0.5, "loss": 7.25}}
        (directory / "export.json").write_text(json.dumps(meta))
        return directory

    return make


@pytest.fixture(scope="session")
def image_export(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, export): 36 random 32x32 PNGs in 3 class folders, embedded by the tiny encoder
    through trainer.embed, exactly as `npid train` exports a collection."""
    import torch

    from trainer.data import CIFAR10_MEAN, CIFAR10_STD, ImageFolder
    from trainer.embed import embed_dataset, model_config, write_export
    from trainer.model import build_encoder
    from trainer.preprocess import Preprocess

    base = tmp_path_factory.mktemp("images")
    root = base / "photos"
    rng = np.random.default_rng(7)
    for c in ("cat", "dog", "ship"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:02d}.png")
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", MODEL_DIM, 32, width=8).eval()
    pre = Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD)
    ds = ImageFolder(root)
    embeddings = embed_dataset(encoder, ds, pre, "cpu", batch_size=16, progress=False).numpy()
    export = write_export(base / "export", embeddings, ds, encoder, model_config("resnet18", MODEL_DIM, 32, 8),
                          pre, {"train_config": {"epochs": 0}, "metrics": {"knn_top1": 0.33}})
    return root, export
