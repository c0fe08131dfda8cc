"""The NPID objectives as pure functions of tensors (all arithmetic in fp32).

Notation: f is the batch's embeddings (B x D, unit), bank the memory (N x D, unit), tau the temperature,
idx the batch's instance ids (B), noise the sampled noise ids (B x m).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _no_autocast(t: torch.Tensor):
    """Autocast off around the logits: under bf16 autocast a matmul/einsum would round v.f/tau to bf16."""
    return torch.autocast(t.device.type, enabled=False)


def softmax_logits(f: torch.Tensor, bank: torch.Tensor, tau: float) -> torch.Tensor:
    """f: BxD, bank: NxD -> logits: BxN  (v_j . f / tau)."""
    with _no_autocast(f):
        return f.float() @ bank.float().t() / tau


def full_softmax_loss(f: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, tau: float) -> torch.Tensor:
    """Exact non-parametric softmax (Eq. 2): -log exp(v_i.f/tau) / sum_j exp(v_j.f/tau), mean over B."""
    return F.cross_entropy(softmax_logits(f, bank, tau), idx)


def pos_neg_logits(f, bank, idx, noise, tau):
    """f: BxD, idx: B, noise: Bxm -> (pos: B, neg: Bxm) dot products / tau."""
    with _no_autocast(f):
        f = f.float()
        pos = (f * bank[idx].float()).sum(1) / tau  # B
        # index_select: one contiguous B*m x D copy, about twice as fast as bank[noise] on the CPU
        noise_vectors = bank.index_select(0, noise.reshape(-1)).view(*noise.shape, -1).float()  # B x m x D
        neg = torch.einsum("bd,bmd->bm", f, noise_vectors) / tau  # B x m
    return pos, neg


def estimate_z(neg_logits: torch.Tensor, n: int) -> torch.Tensor:
    """Monte-Carlo normaliser Z ~= n * E_j[exp(v_j.f/tau)] over the batch's noise samples (Eq. 5)."""
    return neg_logits.float().exp().mean() * n


def nce_loss(pos: torch.Tensor, neg: torch.Tensor, z: torch.Tensor | float, n: int) -> torch.Tensor:
    """Binary NCE (Eq. 6-7) with P_n = 1/n and m = neg.shape[1] noise samples per positive.

    P(i|v) = exp(logit) / Z;  h(i, v) = P / (P + m P_n);
    loss = -E[log h(i, v_pos)] - m E[log(1 - h(i, v_noise))], written as a sum over the m samples.
    pos: B, neg: Bxm (logits, already divided by tau) -> scalar.
    """
    m = neg.shape[1]
    log_mpn = torch.log(torch.tensor(m / n, dtype=torch.float32, device=pos.device))  # log(m P_n)
    log_z = torch.log(torch.as_tensor(z, dtype=torch.float32, device=pos.device))
    log_p_pos = pos.float() - log_z  # B
    log_p_neg = neg.float() - log_z  # B x m
    # log h = log P - log(P + m Pn);  log(1 - h) = log(m Pn) - log(P + m Pn)
    log_h_pos = log_p_pos - torch.logaddexp(log_p_pos, log_mpn)
    log_1mh_neg = log_mpn - torch.logaddexp(log_p_neg, log_mpn)
    return -(log_h_pos + log_1mh_neg.sum(1)).mean()


def infonce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the positive against m sampled negatives. pos: B, neg: Bxm (logits)."""
    logits = torch.cat([pos[:, None], neg], 1).float()  # B x (1 + m)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def proximal_term(f: torch.Tensor, previous: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 9's lambda * ||v_i(t) - v_i(t-1)||^2, mean over the batch. f, previous: BxD."""
    return lam * (f.float() - previous.float()).pow(2).sum(1).mean()


def parametric_softmax_loss(f: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Table 1's baseline: an n-way linear classifier over the embedding. weight: NxD."""
    with _no_autocast(f):
        return F.cross_entropy(f.float() @ weight.float().t(), idx)  # B x N logits
