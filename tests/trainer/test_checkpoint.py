"""Checkpoints: a snapshot taken at save time, written by a background thread, on a schedule, no subprocess."""

from __future__ import annotations

import subprocess
import threading

import pytest
import synthetic
import torch

import trainer.checkpoint
import trainer.train
from trainer.checkpoint import CheckpointWriter
from trainer.config import TrainConfig
from trainer.train import train


def test_snapshot_is_the_state_at_save_time_and_the_file_is_written_off_the_caller_thread(tmp_path, monkeypatch):
    writers = []
    real_write = trainer.checkpoint.atomic_write

    def write_and_note_thread(path, data):
        writers.append(threading.current_thread())
        real_write(path, data)

    monkeypatch.setattr(trainer.checkpoint, "atomic_write", write_and_note_thread)
    weights = torch.arange(1000.0)
    state = {"learner": {"w": weights}, "optimizer": {"state": {0: {"momentum": weights * 2}}}, "epoch": 3}
    writer = CheckpointWriter(tmp_path / "checkpoint.pt")
    writer.save(state)
    weights.add_(1.0)  # the next steps change the live tensors in place
    state["optimizer"]["state"][0]["momentum"].zero_()
    writer.wait()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    torch.testing.assert_close(saved["learner"]["w"], torch.arange(1000.0))
    torch.testing.assert_close(saved["optimizer"]["state"][0]["momentum"], torch.arange(1000.0) * 2)
    assert writers and threading.main_thread() not in writers
    assert not (tmp_path / "checkpoint.tmp").exists()  # written to a temporary name, then renamed


def test_a_failed_write_is_reported_on_wait(tmp_path):
    writer = CheckpointWriter(tmp_path / "missing" / "checkpoint.pt")
    writer.save({"epoch": 1})
    with pytest.raises(RuntimeError, match="writing checkpoint"):
        writer.wait()
    writer.wait()  # reported once


def test_checkpoints_every_n_epochs_and_at_the_end_with_one_git_call(tmp_path, monkeypatch):
    folder = synthetic.make_folder(tmp_path / "images", per_class=4, size=16)
    saved = []

    class RecordingWriter(CheckpointWriter):
        def save(self, state):
            saved.append((state["epoch"], state["step"]))
            super().save(state)

    git_calls = []
    real_run = subprocess.run

    def run_and_count(*args, **kwargs):
        git_calls.append(args)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(trainer.train, "CheckpointWriter", RecordingWriter)
    monkeypatch.setattr(trainer.checkpoint.subprocess, "run", run_and_count)
    cfg = TrainConfig(data=str(folder), image_size=16, width=8, dim=16, epochs=5, batch_size=8, negatives=8,
                      checkpoint_every=2, knn_every=0, out=str(tmp_path / "run"), progress=False, device="cpu")
    train(cfg)
    assert saved == [(2, 0), (4, 0), (5, 0)]
    assert len(git_calls) == 1  # the code version, read once per run, never in the loop
    blob = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert blob["epoch"] == 5 and blob["code_version"]
