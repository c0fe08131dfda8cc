"""Memory bank update maths against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.bank import MemoryBank


def numpy_update(vectors, idx, features, m):
    out = vectors.astype(np.float64).copy()
    for i, f in zip(idx, features, strict=True):
        mixed = m * out[i] + (1 - m) * f.astype(np.float64)
        out[i] = mixed / np.linalg.norm(mixed)
    return out


@pytest.mark.parametrize("momentum", [0.5, 0.0, 0.9])
def test_update_matches_numpy(momentum):
    n, d = 30, 16
    bank = MemoryBank(n, d, momentum, generator=torch.Generator().manual_seed(0))
    before = bank.vectors.clone()
    np.testing.assert_allclose(before.norm(dim=1).numpy(), 1.0, atol=1e-6)  # random unit init
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(n, generator=g)[:8]
    feats = torch.nn.functional.normalize(torch.randn(8, d, generator=g), dim=1)
    bank.update(idx, feats)
    expected = numpy_update(before.numpy(), idx.numpy(), feats.numpy(), momentum)
    np.testing.assert_allclose(bank.vectors.numpy(), expected, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(bank.vectors[untouched], before[untouched])
    np.testing.assert_allclose(bank.vectors.norm(dim=1).numpy(), 1.0, atol=1e-6)
    if momentum == 0.0:
        torch.testing.assert_close(bank.vectors[idx], feats)


def test_update_accepts_bf16_and_keeps_fp32():
    bank = MemoryBank(10, 4, generator=torch.Generator().manual_seed(0))
    before = bank.vectors.clone()
    f = torch.nn.functional.normalize(torch.randn(3, 4), dim=1).bfloat16()
    bank.update(torch.tensor([1, 4, 7]), f)
    assert bank.vectors.dtype == torch.float32
    expected = numpy_update(before.numpy(), [1, 4, 7], f.float().numpy(), 0.5)
    np.testing.assert_allclose(bank.vectors.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_update_does_not_track_gradients():
    bank = MemoryBank(10, 4)
    f = torch.randn(2, 4, requires_grad=True)
    bank.update(torch.tensor([0, 1]), f)
    assert not bank.vectors.requires_grad


def test_state_dict_round_trip():
    a = MemoryBank(12, 5, generator=torch.Generator().manual_seed(0))
    a.update(torch.tensor([0, 3]), torch.randn(2, 5))
    state = a.state_dict()
    assert list(state) == ["vectors"]  # a persistent buffer, not a parameter
    assert not list(a.parameters())
    b = MemoryBank(12, 5, generator=torch.Generator().manual_seed(99))
    assert not torch.equal(a.vectors, b.vectors)
    b.load_state_dict(state)
    assert torch.equal(a.vectors, b.vectors)


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        MemoryBank(0, 4)
