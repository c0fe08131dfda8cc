"""Fixtures for the service tests: a generated image collection (with awkward modes), a tiny model trained
on it by the real trainer, index versions built from its export, and the app served by TestClient or a
real uvicorn.

Helpers are fixtures because test modules cannot import conftest under --import-mode=importlib.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import ports
import pytest
import synthetic
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from index import ArtifactStore
from service.api.app import create_app
from service.settings import Settings
from trainer.config import TrainConfig
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder
from trainer.embed import embed_dataset, model_config, write_export
from trainer.model import build_encoder
from trainer.preprocess import Preprocess
from trainer.train import train

IMAGE_SIZE = 16  # px: the tiny model's input
DIM = 16


def awkward_images() -> dict[str, bytes]:
    """Files in the modes uploads arrive in: each must come back as its own nearest neighbour."""
    rng = np.random.default_rng(7)

    def rgb() -> Image.Image:  # a different picture per file: no two files may tie as neighbours
        return Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB")

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display

    def enc(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    frames = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50)
    deep = Image.fromarray((rng.random((20, 24)) * 65535).astype(np.uint16))  # mode I;16
    return {
        "cmyk.jpg": enc(rgb().convert("CMYK"), "JPEG", quality=92),
        "rotated.jpg": enc(rgb(), "JPEG", quality=92, exif=exif),
        "deep16.png": enc(deep, "PNG"),
        "palette_alpha.png": enc(rgb().convert("P"), "PNG", transparency=3),
        "grey_alpha.png": enc(rgb().convert("LA"), "PNG"),
        "animated.gif": gif.getvalue(),
        "photo.webp": enc(rgb(), "WEBP", quality=90),
        "bitmap.bmp": enc(rgb(), "BMP"),
        "scan.tiff": enc(rgb(), "TIFF"),
    }


@pytest.fixture(scope="session")
def collection_template(tmp_path_factory) -> Path:
    """root/<class>/*.png for four shape classes, plus root/odd/ with one file per awkward mode."""
    root = synthetic.make_folder(tmp_path_factory.mktemp("data") / "images", per_class=6, size=IMAGE_SIZE)
    (root / "odd").mkdir()
    for name, data in awkward_images().items():
        (root / "odd" / name).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def trained_export(collection_template, tmp_path_factory) -> Path:
    """A tiny encoder trained for one epoch on the collection by trainer.train, exported."""
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(collection_template), image_size=IMAGE_SIZE, arch="resnet18", width=8, dim=DIM,
                      epochs=1, batch_size=16, negatives=8, device="cpu", out=str(out), progress=False,
                      workers=0, knn_every=0, knn_k=(5,))
    train(cfg)
    return out / "export"


@pytest.fixture(scope="session")
def other_export(collection_template, tmp_path_factory) -> Path:
    """A second, different model (random init, other seed, other preprocessing) exported over the same
    collection: the version a hot swap moves to."""
    torch.manual_seed(1)
    encoder = build_encoder("resnet18", DIM, IMAGE_SIZE, width=8).eval()
    pre = Preprocess.for_size(IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    ds = ImageFolder(collection_template)
    with torch.no_grad():
        vectors = embed_dataset(encoder, ds, pre, "cpu", progress=False).numpy()
    out = tmp_path_factory.mktemp("other") / "export"
    return write_export(out, vectors, ds, encoder, model_config("resnet18", DIM, IMAGE_SIZE, 8), pre, {})


@pytest.fixture(scope="session")
def store_template(trained_export, collection_template, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    ArtifactStore(root).build(trained_export, collection_root=collection_template)
    return root


@pytest.fixture
def dirs(collection_template, store_template, tmp_path) -> tuple[Path, Path]:
    """Private copies of the collection and the index store, for tests that change them."""
    collection = shutil.copytree(collection_template, tmp_path / "images")
    store = shutil.copytree(store_template, tmp_path / "store")
    return collection, store


@pytest.fixture
def make_settings(dirs):
    """Settings over the private copies; keyword arguments override (rate limit off unless given)."""

    def make(**overrides) -> Settings:
        collection, store = dirs
        values = {"collection_root": collection, "artifacts_dir": store, "rate_limit_per_minute": 0,
                  "poll_interval_s": 0.1, **overrides}
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def client(make_settings):
    with TestClient(create_app(make_settings())) as c:
        yield c


@pytest.fixture(scope="session")
def shared_client(collection_template, store_template):
    """One app over the session's collection and store, for the many read-only requests."""
    settings = Settings(_env_file=None, collection_root=collection_template, artifacts_dir=store_template,
                        rate_limit_per_minute=0)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def serve():
    """serve(settings) -> context manager running the app under a real uvicorn; yields its base URL."""

    @contextlib.contextmanager
    def run(settings: Settings):
        port = ports.free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)

    return run
