"""A run can be cancelled in every phase: while the collection is decoded into the cache, while the memory bank
is filled, between training steps, and while the collection is embedded; every phase reports how far it is."""

from __future__ import annotations

import pytest
import synthetic

from trainer.config import TrainConfig
from trainer.progress import Progress, TrainingCancelled, ticker
from trainer.train import train


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic.make_folder(tmp_path_factory.mktemp("cancel"), per_class=16, size=16)


def config(tmp_path, folder, **changes) -> TrainConfig:
    base = dict(data=str(folder), image_size=16, arch="resnet18", width=8, dim=16, epochs=1, batch_size=16,
                objective="softmax", temperature=0.1, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                knn_every=0, knn_k=(5,), progress=False, bank_init="features", device="cpu")
    return TrainConfig(**{**base, **changes})


def stop_when(condition):
    """should_stop that answers True once `condition(reports so far)` holds; -> (should_stop, reports)."""
    reports: list[Progress] = []
    return (lambda: condition(reports)), reports


def test_cancel_while_decoding_into_the_cache(tmp_path, folder):
    should_stop, reports = stop_when(lambda r: any(p.phase == "loading" and p.done for p in r))
    with pytest.raises(TrainingCancelled, match="loading"):
        train(config(tmp_path, folder), on_progress=reports.append, should_stop=should_stop)
    images = len(list(folder.glob("*/*.png")))
    assert {p.phase for p in reports} == {"loading"} and reports[-1].total == images  # images to decode
    assert not (tmp_path / "run" / "export").exists()
    assert train(config(tmp_path, folder))["images"] == images  # the cache left behind is usable


def test_cancel_while_the_bank_is_filled(tmp_path, folder):
    train(config(tmp_path, folder, out=str(tmp_path / "warm")))  # the cache is built: loading is the bank fill
    should_stop, reports = stop_when(lambda r: any(p.phase == "loading" for p in r))
    with pytest.raises(TrainingCancelled, match="loading"):
        train(config(tmp_path, folder), on_progress=reports.append, should_stop=should_stop)
    assert not any(p.phase == "training" for p in reports)


def test_cancel_while_the_collection_is_embedded(tmp_path, folder):
    should_stop, reports = stop_when(lambda r: any(p.phase == "embedding" for p in r))
    with pytest.raises(TrainingCancelled, match="embedding"):
        train(config(tmp_path, folder, bank_init="random"), on_progress=reports.append, should_stop=should_stop)
    phases = [p.phase for p in reports]
    assert phases.index("training") < phases.index("embedding") and "exporting" not in phases
    assert (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "export").exists()


def test_a_tick_reports_now_and_then_and_on_the_last_item():
    now = [0.0]
    seen: list[Progress] = []
    tick = ticker("embedding", seen.append, None, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] += 0.01  # 100 items in a second
        tick(done, 100)
    assert [p.done for p in seen][-1] == 100 and 2 <= len(seen) <= 4  # every 0.5 s, and the last one
