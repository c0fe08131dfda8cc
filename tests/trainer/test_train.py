"""End-to-end training on generated folders: learning, exact resume, divergence, bad files, export."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import synthetic
import torch

from trainer.config import TrainConfig
from trainer.embed import Embedder
from trainer.progress import TrainingCancelled
from trainer.train import TrainingDiverged, train


def tiny(tmp_path, data, **changes) -> TrainConfig:
    base = dict(data=str(data), image_size=16, arch="resnet18", width=8, dim=32, epochs=2, batch_size=32,
                objective="nce", negatives=32, temperature=0.1, out=str(tmp_path / "run"), knn_k=(10,),
                progress=False)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic.make_folder(tmp_path_factory.mktemp("synthetic"), per_class=24, size=16)


def test_run_writes_export_logs_and_pictures(tmp_path, folder):
    (folder / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "disc" / "empty.jpg").write_bytes(b"")
    try:
        metrics = train(tiny(tmp_path, folder))
    finally:
        (folder / "disc" / "broken.png").unlink()
        (folder / "disc" / "empty.jpg").unlink()
    run = tmp_path / "run"
    for name in ("config.yaml", "checkpoint.pt", "log.jsonl", "curves.png", "neighbours.png",
                 "collection_map.png", "metrics.json"):
        assert (run / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert metrics["skipped"] == 2 and metrics["images"] == 96
    meta = json.loads((run / "export" / "export.json").read_text())
    assert sorted(meta["skipped"]) == ["disc/broken.png", "disc/empty.jpg"]
    emb = np.load(run / "export" / "embeddings.npy")
    assert emb.shape == (96, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    items = [json.loads(line) for line in (run / "export" / "items.jsonl").read_text().splitlines()]
    assert [it["id"] for it in items] == list(range(96)) and items[0]["label"] == "checker"
    # the exported model + preprocessing embed a collection image exactly as the export did
    from trainer.data import load_rgb
    again = Embedder.from_dir(run / "export").embed([load_rgb(folder / items[5]["path"])])
    np.testing.assert_allclose(again[0], emb[5], atol=1e-5)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, folder):
    """A 3-epoch run (3 steps per epoch) that nothing interrupts: the reference for the resumed ones."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg = tiny(tmp, folder, epochs=3, knn_every=0, checkpoint_every=2)
    return cfg, train(cfg)


def assert_same_run(a_dir, a_metrics, b_dir, b_metrics):
    assert b_metrics["final_loss"] == a_metrics["final_loss"]
    a = torch.load(a_dir / "checkpoint.pt", weights_only=False)
    b = torch.load(b_dir / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 0
    for key in a["learner"]:
        torch.testing.assert_close(a["learner"][key], b["learner"][key], rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    np.testing.assert_array_equal(np.load(a_dir / "export" / "embeddings.npy"),
                                  np.load(b_dir / "export" / "embeddings.npy"))


def stop_at_call(k, action=lambda: True):
    """should_stop that runs `action` at its k-th call (one call per step: 3 steps per epoch here)."""
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return action() if calls["n"] == k else False

    return should_stop


def test_resume_after_cancel_inside_an_epoch_equals_uninterrupted_run(tmp_path, uninterrupted):
    cfg, full = uninterrupted
    cut = cfg.replace(out=str(tmp_path / "cut"))
    with pytest.raises(TrainingCancelled):
        train(cut, should_stop=stop_at_call(5))  # epoch 2, before step 2
    assert not (tmp_path / "cut" / "export").exists()
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert (saved["epoch"], saved["step"]) == (1, 1)  # written at the cancel, mid-epoch
    assert_same_run(Path(cfg.out), full, tmp_path / "cut", train(cut))


def test_ctrl_c_checkpoints_at_the_step_boundary_and_resumes_exactly(tmp_path, uninterrupted):
    cfg, full = uninterrupted
    cut = cfg.replace(out=str(tmp_path / "cut"))

    def press_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)  # delivered now; training stops before the next step
        return False

    with pytest.raises(KeyboardInterrupt, match="checkpoint"):
        train(cut, should_stop=stop_at_call(7, press_ctrl_c))  # epoch 3: its first step runs, not the second
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert (saved["epoch"], saved["step"]) == (2, 1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C handling restored
    assert_same_run(Path(cfg.out), full, tmp_path / "cut", train(cut))


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, folder):
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train(tiny(tmp_path, folder, lr=1e30, momentum=0.0, epochs=1))


def test_training_is_seeded_and_deterministic_on_cpu(tmp_path, folder):
    cfg = tiny(tmp_path, folder, epochs=1, knn_every=0)
    a = train(cfg.replace(out=str(tmp_path / "a")))
    b = train(cfg.replace(out=str(tmp_path / "b")))
    assert a["final_loss"] == b["final_loss"]


def test_resuming_a_different_run_is_refused(tmp_path, folder):
    cfg = tiny(tmp_path, folder, epochs=1, knn_every=0)
    train(cfg)
    with pytest.raises(ValueError, match="different run.*dim"):
        train(cfg.replace(dim=16, epochs=2))
    assert train(cfg.replace(epochs=2))["epochs"] == 2  # more epochs of the same run resume fine


def test_one_first_level_folder_trains_without_a_linear_probe(tmp_path):
    """All images under one first-level folder: a single label, on which no classifier can be fitted. The run
    still completes (the deploy test's collection, `images/shapes/<texture>/`, found this) and reports kNN only."""
    root = tmp_path / "images"
    synthetic.make_folder(root / "shapes", per_class=6, size=16)
    metrics = train(tiny(tmp_path, root, epochs=1, negatives=8, batch_size=8))
    assert "knn" in metrics and "linear_probe_top1" not in metrics
