"""The NPID objectives as pure functions of tensors (all arithmetic in fp32).

Notation: f is the batch's embeddings (B x D, unit), bank the memory (N x D, unit), tau the temperature,
idx the batch's instance ids (B), noise the sampled noise ids: B x m (m per sample, the paper's NCE) or
m (one set shared by the whole batch). 1/tau is folded into f (B x D multiplies) rather than applied to
the logits (B x N or B x m), the cheaper side of every product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _no_autocast(t: torch.Tensor):
    """Autocast off around the logits: under bf16 autocast a matmul would round v.f/tau to bf16."""
    return torch.autocast(t.device.type, enabled=False)


def full_softmax_loss(f: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, tau: float) -> torch.Tensor:
    """Exact non-parametric softmax (Eq. 2): -log exp(v_i.f/tau) / sum_j exp(v_j.f/tau), mean over B.

    Gradients flow to f only (the bank is a buffer, updated by its own rule).
    """
    with _no_autocast(f):
        fs = f.float() * (1.0 / tau)  # B x D
        if 2.0 / tau + math.log(bank.shape[0]) > MAX_LOG_RATIO:  # p_i could underflow: the log-softmax route
            return F.cross_entropy(fs @ bank.float().t(), idx)
        return _BankSoftmaxCrossEntropy.apply(fs, bank.float(), idx)


# |log p_i| <= 2/tau + ln n for unit vectors (every logit lies in [-1/tau, 1/tau]); below 80, p_i > 1.8e-35
# stays a normal fp32 number, so -log p_i is exact without a log-softmax
MAX_LOG_RATIO = 80.0


class _BankSoftmaxCrossEntropy(torch.autograd.Function):
    """Cross-entropy of softmax(fs . bank^T) at idx, with one B x N array instead of F.cross_entropy's four.

    Forward keeps the probabilities p (one softmax over the logits); backward turns them in place into
    p - onehot(idx) and makes one product with the bank. F.cross_entropy instead writes log-probabilities,
    a zero-filled gradient, and the gradient of the log-softmax: three more passes over B x N (656 MB at
    B=128, n=1,281,167). Pure: no state changes; the graph is used once (p is reused in place).
    """

    @staticmethod
    def forward(ctx, fs: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(fs @ bank.t(), 1)  # fs: BxD, bank: NxD -> p: BxN
        loss = -p.gather(1, idx[:, None]).log().mean()  # p_i >= exp(-MAX_LOG_RATIO), see above
        ctx.save_for_backward(p, bank, idx)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, bank, idx = ctx.saved_tensors
        rows = torch.arange(len(idx), device=p.device)
        p[rows, idx] -= 1.0  # d loss_b / d logits_b = p_b - onehot(idx_b), B x N, in place
        return (p @ bank) * (grad / len(idx)), None, None  # B x D


def pos_neg_logits(f: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor,
                   tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """f: BxD, idx: B, noise: Bxm (per sample) or m (shared) -> (pos: B, neg: Bxm) dot products / tau.

    Shared noise gathers one m x D block and makes one B x D x m product. Per-sample noise either scores
    the whole bank once and picks the B x m logits (when n <= B m: one B x D x n product is cheaper than
    moving B x m x D vectors, 268 MB at B=128, m=4096, D=128), or gathers those vectors for a batched
    product (n > B m, as on ImageNet).
    """
    with _no_autocast(f):
        f = f.float() * (1.0 / tau)  # B x D
        pos = (f * bank.index_select(0, idx).float()).sum(1)  # B
        if noise.dim() == 1:
            neg = f @ bank.index_select(0, noise).float().t()  # B x m
        elif bank.shape[0] <= noise.numel():
            neg = _NoiseLogitsFromAllScores.apply(f, bank.float(), noise)  # B x m
        else:
            # index_select: one contiguous B*m x D copy, about twice as fast as bank[noise] on the CPU
            noise_vectors = bank.index_select(0, noise.reshape(-1)).view(*noise.shape, -1).float()  # B x m x D
            neg = _PerSampleNoiseLogits.apply(f, noise_vectors)  # B x m
    return pos, neg


class _PerSampleNoiseLogits(torch.autograd.Function):
    """neg_bj = nv_bj . f_b, with a backward that reads the B x m x D noise vectors in their own layout.

    Autograd's bmm backward multiplies by the transposed B x D x m view, which the CPU kernel copies first
    (twice the time of the forward); here both products are m x D row-major matrix-vector products.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, noise_vectors: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(noise_vectors)
        return torch.bmm(noise_vectors, f[:, :, None]).squeeze(2)  # B x m x D, B x D x 1 -> B x m

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (noise_vectors,) = ctx.saved_tensors
        return torch.bmm(grad[:, None, :], noise_vectors).squeeze(1), None  # B x 1 x m, B x m x D -> B x D


class _NoiseLogitsFromAllScores(torch.autograd.Function):
    """neg_bj = v_{noise_bj} . f_b read off the full B x n score matrix; gradient by a scatter and one product."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, bank: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bank, noise)
        return (f @ bank.t()).gather(1, noise)  # B x D, N x D -> B x N -> B x m

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        bank, noise = ctx.saved_tensors
        per_row = grad.new_zeros(grad.shape[0], bank.shape[0]).scatter_add_(1, noise, grad)  # B x N (repeats add)
        return per_row @ bank, None, None  # B x D


def estimate_z(neg_logits: torch.Tensor, n: int) -> torch.Tensor:
    """Monte-Carlo normaliser Z ~= n * E_j[exp(v_j.f/tau)] over the batch's noise samples (Eq. 5)."""
    return neg_logits.float().exp().mean() * n


def nce_loss(pos: torch.Tensor, neg: torch.Tensor, z: torch.Tensor | float, n: int) -> torch.Tensor:
    """Binary NCE (Eq. 6-7) with P_n = 1/n and m = neg.shape[1] noise samples per positive.

    P(i|v) = exp(logit) / Z;  h(i, v) = P / (P + m P_n);
    loss = -E[log h(i, v_pos)] - m E[log(1 - h(i, v_noise))], written as a sum over the m samples.
    With c = log Z + log(m P_n): -log h = softplus(c - logit) and -log(1 - h) = softplus(logit - c),
    exact, stable for any logit, and one pass over the B x m logits.
    pos: B, neg: Bxm (logits, already divided by tau) -> scalar.
    """
    m = neg.shape[1]
    log_z = torch.log(z.float()) if isinstance(z, torch.Tensor) else math.log(z)
    c = log_z + math.log(m / n)  # log(Z m P_n)
    return (F.softplus(c - pos.float()).sum() + F.softplus(neg.float() - c).sum()) / pos.shape[0]


def infonce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the positive against m sampled negatives. pos: B, neg: Bxm (logits)."""
    logits = torch.cat([pos[:, None], neg], 1).float()  # B x (1 + m)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def proximal_term(f: torch.Tensor, previous: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 9's lambda * ||v_i(t) - v_i(t-1)||^2, mean over the batch. f, previous: BxD."""
    return lam * (f.float() - previous.float()).pow(2).sum(1).mean()


def parametric_softmax_loss(f: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor, tau: float) -> torch.Tensor:
    """Table 1's baseline, an n-way classifier, made able to learn: unit weight rows and a temperature.

    logits_j = w_j.f / (|w_j| tau). With raw weights on unit features under weight decay the logits stay
    near 0 and the loss at ln n; normalised rows and 1/tau give the same logit range as the memory bank
    (a cosine classifier, as NormFace / the paper's own non-parametric softmax). weight: NxD.
    """
    with _no_autocast(f):
        w = F.normalize(weight.float(), dim=1)  # N x D
        return F.cross_entropy((f.float() * (1.0 / tau)) @ w.t(), idx)  # B x N logits
