"""How a run starts: the airnet backbone, the bank filled from the network's features, warm-start weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.config import AugmentConfig, TrainConfig
from trainer.data import CIFAR10_MEAN, CIFAR10_STD
from trainer.distributed import Dist
from trainer.embed import model_config, save_model
from trainer.feed import DeviceFeed
from trainer.model import build_encoder
from trainer.objective import NPIDObjective
from trainer.preprocess import Preprocess
from trainer.start import features_of_collection, load_initial_weights
from trainer.train import start_state


@pytest.mark.parametrize("size", [16, 32, 96])
def test_airnet_embeds_unit_vectors_at_any_size(size):
    torch.manual_seed(0)
    enc = build_encoder("airnet", 24, size, width=8).eval()
    out = enc(torch.randn(3, 3, size, size))
    assert out.shape == (3, 24) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def setup(n: int = 40, size: int = 16, batch: int = 16):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    pre = Preprocess.for_size(size, CIFAR10_MEAN, CIFAR10_STD)
    feed = DeviceFeed(images, pre, AugmentConfig(), batch, 0, torch.device("cpu"), Dist())
    return images, pre, feed


def test_bank_from_features_is_each_image_embedded_in_collection_order():
    images, pre, feed = setup()
    torch.manual_seed(0)
    enc = build_encoder("airnet", 16, 16, width=8)
    bank = features_of_collection(enc, feed, pre, "cpu", batch_size=8)  # N x D
    with torch.no_grad():  # reference: the same batches, each through training-mode BN on its own
        ref = torch.cat([enc.train()(pre.device_eval(torch.from_numpy(images[i:i + 8]))) for i in range(0, 40, 8)])
    torch.testing.assert_close(bank, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(bank.norm(dim=1), torch.ones(40), atol=1e-5)


def test_a_bank_of_features_gives_the_first_step_targets_near_its_views():
    """The first step's targets mean something: an augmented view is near its own row (cosine >> 0)."""
    images, pre, feed = setup()
    positives = {}
    for init in ("random", "features"):
        torch.manual_seed(0)
        cfg = TrainConfig(data="x", arch="airnet", width=8, dim=16, image_size=16, objective="softmax",
                          temperature=0.1, bank_init=init)
        enc = build_encoder("airnet", 16, 16, width=8)
        objective = NPIDObjective(cfg, 40, torch.Generator().manual_seed(1))
        start_state(cfg, enc, objective, feed, pre, "cpu")
        x, idx, _ = next(iter(feed.epoch(0)))
        with torch.no_grad():
            positives[init] = (enc.train()(x) * objective.bank.vectors[idx]).sum(1).mean().item()  # mean f_i . v_i
    assert abs(positives["random"]) < 0.2 and positives["features"] > 0.5, positives


def test_initial_weights_are_copied_and_a_different_architecture_is_refused(tmp_path):
    torch.manual_seed(0)
    saved = build_encoder("airnet", 16, 16, width=8)
    save_model(saved, model_config("airnet", 16, 16, 8), tmp_path / "model.pt")
    torch.manual_seed(1)
    fresh = build_encoder("airnet", 16, 16, width=8)
    load_initial_weights(fresh, str(tmp_path / "model.pt"), "airnet", 16, 8)
    for (name, a), b in zip(saved.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="cannot start from"):
        load_initial_weights(build_encoder("airnet", 16, 16, width=16), str(tmp_path / "model.pt"), "airnet", 16, 16)
