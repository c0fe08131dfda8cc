"""A time budget is a deadline: the schedule follows the share of it spent, training stops at the step where it
runs out, an epoch cap stops it sooner, and an extended run goes on by the time left. The clock is a counter here
(one "second" a reading), so these tests never wait and never depend on the machine's speed."""

from __future__ import annotations

import itertools
import json

import pytest
import synthetic
import torch

import trainer.budget
from trainer.budget import Budget
from trainer.config import TrainConfig
from trainer.schedule import lr_at, lr_at_fraction
from trainer.train import train


def ticking(step_s: float = 1.0):
    counter = itertools.count()
    return lambda: next(counter) * step_s


def test_the_run_is_done_by_time_or_by_epochs_whichever_comes_first():
    b = Budget(seconds=10.0, cap=4, clock=ticking())  # start reads t=0
    assert b.fraction(0.0) == pytest.approx(0.1)  # t=1: 1 s of 10, 0 epochs of 4
    assert b.fraction(3.0) == pytest.approx(0.75)  # t=2: 0.2 by time, 0.75 by epochs
    assert b.fraction(0.0) == pytest.approx(0.3)
    uncapped = Budget(seconds=10.0, cap=0, clock=ticking())
    assert uncapped.fraction(1e6) == pytest.approx(0.1)  # no epoch cap: only the clock
    assert Budget(None, 5, clock=ticking()).fraction(5.0) == 1.0
    with pytest.raises(ValueError):
        Budget(None, 0)


def test_planned_epochs_and_eta_follow_the_rate_seen():
    b = Budget(seconds=100.0, cap=0, clock=ticking(10.0))  # start t=0; each reading +10 s
    assert b.planned_epochs(2.0, images_per_s=50.0, images=1000) == pytest.approx(2.0 + 90 * 50 / 1000)  # t=10
    assert b.eta_s(2.0, 50.0, 1000) == pytest.approx(80.0)  # t=20
    capped = Budget(seconds=100.0, cap=3, clock=ticking(10.0))
    assert capped.planned_epochs(2.0, 50.0, 1000) == 3  # the cap comes first
    assert capped.eta_s(2.0, 50.0, 1000) == pytest.approx(20.0)  # one epoch of 1000 images at 50/s


def test_a_budgeted_schedule_is_the_epoch_schedule_stretched_over_the_budget():
    cosine = TrainConfig(schedule="cosine", lr=0.03, epochs=0, minutes=5)
    assert [lr_at_fraction(cosine, f) for f in (0.0, 0.5, 1.0)] == pytest.approx([0.03, 0.015, 0.0])
    step = TrainConfig(schedule="step", lr=0.03, epochs=0, minutes=5)  # the paper's milestones at 60% and 80%
    assert [lr_at_fraction(step, f) for f in (0.59, 0.61, 0.81)] == pytest.approx([0.03, 0.003, 0.0003])
    capped = TrainConfig(schedule="cosine", lr=0.03, epochs=40, minutes=5)
    assert lr_at_fraction(capped, 0.25) == pytest.approx(lr_at(capped, 10.0))


@pytest.fixture
def counted_clock(monkeypatch):
    monkeypatch.setattr(trainer.budget, "now", ticking())


def test_training_stops_at_the_deadline_and_an_extension_goes_on_by_the_time_left(tmp_path, counted_clock):
    folder = synthetic.make_folder(tmp_path / "data", per_class=8, size=16)  # 80 images: 10 steps of 8 an epoch
    cfg = TrainConfig(data=str(folder), image_size=16, arch="resnet18", width=8, dim=16, batch_size=8,
                      objective="softmax", temperature=0.1, schedule="cosine", epochs=0, minutes=29 / 60,
                      knn_every=0, knn_k=(5,), out=str(tmp_path / "run"), progress=False, device="cpu")
    metrics = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["partial"]  # 29 readings: the budget ran out inside an epoch, at a step boundary
    assert 1 < metrics["epochs"] < 3 and metrics["epochs"] != int(metrics["epochs"])
    assert metrics["budget_s"] == pytest.approx(29.0) and metrics["epoch_cap"] == 0
    assert metrics["epochs_planned"] > 0  # the estimate, recorded beside the epochs done
    assert rows[-1]["lr"] < 0.1 * cfg.lr < rows[0]["lr"]  # the cosine went (nearly) to 0 within the budget
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    spent = checkpoint["train_seconds"]
    assert spent >= 29.0 and checkpoint["step"] == rows[-1]["steps"]  # cut inside the epoch, to finish it

    longer = train(cfg.replace(minutes=58 / 60), resume=True)  # the background trainer's next stage
    more = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][len(rows):]
    assert more[0]["epoch"] == rows[-1]["epoch"]  # the cut epoch is finished first
    assert longer["epochs"] > metrics["epochs"]
    assert more[0]["lr"] < lr_at_fraction(cfg, 0.0)  # goes on from spent/58 of the schedule, not from its start
    assert more[0]["lr"] <= lr_at_fraction(cfg.replace(minutes=58 / 60), spent / 58 - 0.01)


def test_an_epoch_cap_ends_a_budgeted_run_sooner(tmp_path, counted_clock):
    folder = synthetic.make_folder(tmp_path / "data", per_class=8, size=16)
    cfg = TrainConfig(data=str(folder), image_size=16, arch="resnet18", width=8, dim=16, batch_size=8,
                      objective="softmax", temperature=0.1, schedule="cosine", epochs=1, minutes=60,
                      knn_every=0, knn_k=(5,), out=str(tmp_path / "run"), progress=False, device="cpu")
    metrics = train(cfg)
    assert metrics["epochs"] == 1.0 and metrics["epoch_cap"] == 1
