"""Each NPID loss against a hand-written float64 loop on small random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer import losses

B, D, N, M = 6, 8, 20, 5


def unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    f = unit(B, D, seed=2)
    bank = unit(N, D, seed=3)
    idx = torch.randperm(N, generator=g)[:B]
    noise = torch.randint(N, (B, M), generator=g)
    return f, bank, idx, noise


def dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_full_softmax_matches_loop(batch, tau):
    f, bank, idx, _ = batch
    ref = 0.0
    for b in range(B):
        logits = [dot(bank[j], f[b]) / tau for j in range(N)]
        ref += -math.log(math.exp(logits[idx[b]]) / sum(math.exp(x) for x in logits))
    ref /= B
    got = losses.full_softmax_loss(f, bank, idx, tau)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("tau", [0.07, 0.02])  # 0.02: 2/tau + ln n > 80, the log-softmax route
def test_full_softmax_value_and_gradient_match_float64_autograd(batch, tau):
    f, bank, idx, _ = batch
    f32 = f.clone().requires_grad_(True)
    loss = losses.full_softmax_loss(f32, bank, idx, tau)
    loss.backward()
    f64 = f.double().clone().requires_grad_(True)
    ref = F.cross_entropy(f64 @ bank.double().t() / tau, idx)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(f32.grad.double(), f64.grad, rtol=1e-4, atol=1e-6)
    assert not bank.requires_grad


def test_pos_neg_logits_match_loop(batch):
    f, bank, idx, noise = batch
    tau = 0.07
    pos, neg = losses.pos_neg_logits(f, bank, idx, noise, tau)
    ref_pos = np.array([dot(bank[idx[b]], f[b]) / tau for b in range(B)])
    ref_neg = np.array([[dot(bank[noise[b, j]], f[b]) / tau for j in range(M)] for b in range(B)])
    np.testing.assert_allclose(pos.numpy(), ref_pos, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(neg.numpy(), ref_neg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [M, 2])  # B m = 30 >= N = 20: from all scores; B m = 12 < N: gathered vectors
def test_per_sample_noise_routes_match_float64_autograd(batch, m):
    f, bank, idx, noise = batch
    noise = noise[:, :m].contiguous()
    noise[0, 1 % m] = noise[0, 0]  # a repeated id in one row: its gradient counts twice
    weights = torch.linspace(-1, 1, B * m).view(B, m)
    f32 = f.clone().requires_grad_(True)
    _, neg = losses.pos_neg_logits(f32, bank, idx, noise, 0.1)
    (neg * weights).sum().backward()
    f64 = f.double().clone().requires_grad_(True)
    ref = torch.einsum("bd,bmd->bm", f64, bank.double()[noise]) / 0.1
    (ref * weights.double()).sum().backward()
    torch.testing.assert_close(neg.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f32.grad.double(), f64.grad, rtol=1e-5, atol=1e-5)


def test_estimate_z_matches_loop(batch):
    f, bank, idx, noise = batch
    _, neg = losses.pos_neg_logits(f, bank, idx, noise, 0.07)
    ref = N * sum(math.exp(float(neg[b, j])) for b in range(B) for j in range(M)) / (B * M)
    assert losses.estimate_z(neg, N).item() == pytest.approx(ref, rel=1e-5)


def nce_reference(pos, neg, z, n):
    """loss = mean_b [ -log h(pos_b) - sum_j log(1 - h(neg_bj)) ],  h = P / (P + m/n),  P = exp(x) / Z."""
    m = neg.shape[1]
    total = 0.0
    for b in range(pos.shape[0]):
        p = math.exp(float(pos[b])) / z
        term = -math.log(p / (p + m / n))
        for j in range(m):
            pj = math.exp(float(neg[b, j])) / z
            term -= math.log(1 - pj / (pj + m / n))
        total += term
    return total / pos.shape[0]


@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_nce_with_fixed_z_matches_loop(batch, tau):
    f, bank, idx, noise = batch
    pos, neg = losses.pos_neg_logits(f, bank, idx, noise, tau)
    for z in (losses.estimate_z(neg, N).item(), 3.0, 1e4):
        ref = nce_reference(pos.double(), neg.double(), z, N)
        got = losses.nce_loss(pos, neg, z, N)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(ref, rel=1e-5)
        # a tensor Z gives the same value
        assert losses.nce_loss(pos, neg, torch.tensor(z), N).item() == pytest.approx(ref, rel=1e-5)


def test_nce_finite_for_large_logits():
    """tau = 0.07 and the batch identical to every bank row: logits 1/0.07 everywhere, exp ~ 1.6e6."""
    n, m, tau = 1000, 64, 0.07
    v = unit(1, 128, seed=4)
    bank = v.expand(n, -1).contiguous()
    f = v.expand(4, -1).clone().requires_grad_(True)
    idx = torch.arange(4)
    noise = torch.randint(n, (4, m), generator=torch.Generator().manual_seed(0))
    pos, neg = losses.pos_neg_logits(f, bank, idx, noise, tau)
    z = losses.estimate_z(neg, n)  # = n exp(1/tau): every P is 1/n, h = 1 / (1 + m)
    loss = losses.nce_loss(pos, neg, z, n)
    expected = -math.log(1 / (1 + m)) - m * math.log(m / (1 + m))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(f.grad).all()
    # a badly wrong Z (tiny): P huge, log h -> 0, log(1 - h) very negative but finite
    tiny = losses.nce_loss(pos, neg, 1e-3, n)
    assert torch.isfinite(tiny) and tiny.item() > expected


def test_infonce_matches_loop(batch):
    f, bank, idx, noise = batch
    pos, neg = losses.pos_neg_logits(f, bank, idx, noise, 0.07)
    ref = 0.0
    for b in range(B):
        denom = math.exp(float(pos[b])) + sum(math.exp(float(neg[b, j])) for j in range(M))
        ref += -math.log(math.exp(float(pos[b])) / denom)
    assert losses.infonce_loss(pos, neg).item() == pytest.approx(ref / B, rel=1e-5)


def test_proximal_term_matches_loop(batch):
    f, bank, idx, _ = batch
    prev = bank[idx]
    lam = 30.0
    ref = lam * sum(sum((float(f[b, d]) - float(prev[b, d])) ** 2 for d in range(D)) for b in range(B)) / B
    assert losses.proximal_term(f, prev, lam).item() == pytest.approx(ref, rel=1e-5)
    assert losses.proximal_term(f, f, lam).item() == 0.0


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_parametric_softmax_matches_loop(batch, tau):
    """A cosine classifier: logits w_j.f / (|w_j| tau)."""
    f, _, idx, _ = batch
    weight = torch.randn(N, D, generator=torch.Generator().manual_seed(5)) * 3
    ref = 0.0
    for b in range(B):
        logits = [dot(weight[j], f[b]) / math.sqrt(dot(weight[j], weight[j])) / tau for j in range(N)]
        ref += -math.log(math.exp(logits[idx[b]]) / sum(math.exp(x) for x in logits))
    assert losses.parametric_softmax_loss(f, weight, idx, tau).item() == pytest.approx(ref / B, rel=1e-5)


def all_losses(f, bank, idx, noise, weight, tau=0.07):
    pos, neg = losses.pos_neg_logits(f, bank, idx, noise, tau)
    z = losses.estimate_z(neg, N)
    return {
        "softmax": losses.full_softmax_loss(f, bank, idx, tau),
        "pos": pos,
        "neg": neg,
        "z": z,
        "nce": losses.nce_loss(pos, neg, z, N),
        "infonce": losses.infonce_loss(pos, neg),
        "proximal": losses.proximal_term(f, bank[idx], 30.0),
        "parametric": losses.parametric_softmax_loss(f, weight, idx, tau),
    }


def test_losses_fp32_for_bf16_inputs(batch):
    f, bank, idx, noise = batch
    weight = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    fb, bankb, wb = f.bfloat16(), bank.bfloat16(), weight.bfloat16()
    got = all_losses(fb, bankb, idx, noise, wb)
    # the reference: the same (bf16-rounded) values, computed in fp32 throughout
    ref = all_losses(fb.float(), bankb.float(), idx, noise, wb.float())
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, ref[name], rtol=1e-5, atol=1e-5, msg=name)


def test_losses_fp32_under_autocast(batch):
    """Under bf16 autocast the logits must not be computed in bf16 (exp(1/0.07) needs fp32 precision)."""
    f, bank, idx, noise = batch
    weight = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    ref = all_losses(f, bank, idx, noise, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = all_losses(f, bank, idx, noise, weight)
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, ref[name], rtol=1e-5, atol=1e-5, msg=name)


# --- shared negatives: one set of m noise ids for the whole batch -----------------------------------


def test_shared_noise_logits_match_loop(batch):
    f, bank, idx, _ = batch
    tau = 0.07
    shared = torch.randint(N, (M,), generator=torch.Generator().manual_seed(9))
    pos, neg = losses.pos_neg_logits(f, bank, idx, shared, tau)
    assert neg.shape == (B, M)
    ref_neg = np.array([[dot(bank[shared[j]], f[b]) / tau for j in range(M)] for b in range(B)])
    np.testing.assert_allclose(neg.numpy(), ref_neg, rtol=1e-5, atol=1e-5)
    # the same as per-sample noise whose every row is the shared set
    _, neg_rows = losses.pos_neg_logits(f, bank, idx, shared.expand(B, M), tau)
    torch.testing.assert_close(neg, neg_rows, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_nce_with_shared_noise_matches_loop(batch, tau):
    f, bank, idx, _ = batch
    shared = torch.randint(N, (M,), generator=torch.Generator().manual_seed(10))
    pos, neg = losses.pos_neg_logits(f, bank, idx, shared, tau)
    z = losses.estimate_z(neg, N).item()
    ref = nce_reference(pos.double(), neg.double(), z, N)
    assert losses.nce_loss(pos, neg, z, N).item() == pytest.approx(ref, rel=1e-5)


def test_nce_gradient_matches_float64_autograd(batch):
    """The softplus form's gradient equals autograd through the textbook log h form in float64."""
    f, bank, idx, noise = batch
    z, tau = 7.5, 0.1
    f32 = f.clone().requires_grad_(True)
    losses.nce_loss(*losses.pos_neg_logits(f32, bank, idx, noise, tau), z, N).backward()
    f64 = f.double().clone().requires_grad_(True)
    pos = (f64 * bank.double()[idx]).sum(1) / tau
    neg = torch.einsum("bd,bmd->bm", f64, bank.double()[noise]) / tau
    p_pos, p_neg = pos.exp() / z, neg.exp() / z
    mpn = M / N
    loss = -(torch.log(p_pos / (p_pos + mpn)) + torch.log(mpn / (p_neg + mpn)).sum(1)).mean()
    loss.backward()
    torch.testing.assert_close(f32.grad.double(), f64.grad, rtol=1e-4, atol=1e-6)


# --- NPIDObjective: the normaliser Z --------------------------------------------------------------


def objective(**overrides):
    from trainer.config import TrainConfig
    from trainer.objective import NPIDObjective

    cfg = TrainConfig(dim=D, negatives=M, objective="nce", **overrides)
    return NPIDObjective(cfg, N, generator=torch.Generator().manual_seed(0))


def two_batches(obj):
    g = torch.Generator().manual_seed(7)
    out = []
    for seed in (10, 11):
        f = unit(B, D, seed=seed)
        idx = torch.randperm(N, generator=g)[:B]
        noise = obj.draw_noise(B, g, "cpu")
        _, neg = losses.pos_neg_logits(f, obj.bank.vectors, idx, noise, obj.cfg.tau)
        out.append((f, idx, noise, losses.estimate_z(neg, N).item()))
    return out


def test_z_fixed_after_first_batch():
    obj = objective()
    (f1, i1, n1, z1), (f2, i2, n2, z2) = two_batches(obj)
    assert z1 != pytest.approx(z2, rel=1e-3)  # the two batches would estimate different Z
    assert obj.z.item() == 0.0
    loss1 = obj(f1, i1, n1)
    assert obj.z.item() == pytest.approx(z1, rel=1e-6)
    pos, neg = losses.pos_neg_logits(f1, obj.bank.vectors, i1, n1, obj.cfg.tau)
    assert loss1.item() == pytest.approx(nce_reference(pos.double(), neg.double(), z1, N), rel=1e-5)
    obj(f2, i2, n2)
    assert obj.z.item() == pytest.approx(z1, rel=1e-6)  # unchanged by the second batch
    assert "z" in obj.state_dict()


def test_z_running_average():
    zm = 0.9
    obj = objective(z_momentum=zm)
    (f1, i1, n1, z1), (f2, i2, n2, z2) = two_batches(obj)
    obj(f1, i1, n1)
    assert obj.z.item() == pytest.approx(z1, rel=1e-6)  # first batch: the estimate itself
    obj(f2, i2, n2)
    assert obj.z.item() == pytest.approx(zm * z1 + (1 - zm) * z2, rel=1e-6)


def test_objective_proximal_adds_eq9_term():
    lam = 30.0
    plain, prox = objective(), objective(proximal=lam)
    f, idx, noise, _ = two_batches(plain)[0]
    diff = prox(f, idx, noise) - plain(f, idx, noise)
    expected = losses.proximal_term(f, plain.bank.vectors[idx], lam).item()
    assert diff.item() == pytest.approx(expected, rel=1e-5)


def test_shared_negatives_draw_one_set_per_batch():
    shared = objective(shared_negatives=True)
    noise = shared.draw_noise(B, torch.Generator().manual_seed(0), "cpu")
    assert noise.shape == (M,) and noise.min() >= 0 and noise.max() < N
    assert objective().draw_noise(B, torch.Generator().manual_seed(0), "cpu").shape == (B, M)
    f, idx, _, _ = two_batches(shared)[0]
    pos, neg = losses.pos_neg_logits(f, shared.bank.vectors, idx, noise, shared.cfg.tau)
    expected = nce_reference(pos.double(), neg.double(), losses.estimate_z(neg, N).item(), N)
    assert shared(f, idx, noise).item() == pytest.approx(expected, rel=1e-5)


def test_z_state_is_a_python_flag_restored_with_the_state_dict():
    obj = objective()
    f, idx, noise, z1 = two_batches(obj)[0]
    assert not obj.z_ready
    obj(f, idx, noise)
    assert obj.z_ready
    fresh = objective()
    fresh.load_state_dict(obj.state_dict())
    assert fresh.z_ready and fresh.z.item() == pytest.approx(z1, rel=1e-6)
    fresh.load_state_dict(objective().state_dict())  # a state before the first batch
    assert not fresh.z_ready
