"""Contrastive losses over 2N views: view a in [0, N) is view 1 of sample a, view N + a its view 2.

Masks (all [2N, 2N] bool, row = anchor):
- allowed  M(i): the softmax denominator: every view except the anchor itself; with false-negative
  elimination (FNE) also minus every view of a duplicate sample, but the partner view always stays.
- positive Q(i) = S(i) & M(i): the partner view; with supervised positive inclusion (SPI) a converted
  anchor also takes both views of every other converted sample.
Per anchor the log-softmax over M(i) is averaged over Q(i) (|Q(i)| >= 1: the partner), then averaged
over the 2N anchors (the paper's convention; the authors' code sums the two directions = 2x this).
The divisor is |Q(i)| (paper); the authors' code divides by |S(i)|, counting a converted duplicate
that FNE removed. Similarities are computed in float32 whatever the input dtype (and autocast is
off inside), so bf16 encoders stay stable. info_nce_loss and supcon_loss run through one fused
autograd function (softmax computed once); masked_contrastive_loss is the readable reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def exact_duplicates(keys: Tensor) -> Tensor:
    """[N] duplicate keys (hash of the raw feature tuple) -> [N, N] bool, True where equal (diagonal too)."""
    return keys[:, None] == keys[None, :]


def cosine_duplicates(e: Tensor, threshold: float) -> Tensor:
    """The authors' code: samples whose unmasked embeddings have cosine > threshold (no gradient)."""
    z = F.normalize(e.detach().float(), dim=1)
    with torch.autocast(z.device.type, enabled=False):
        return (z @ z.T) > threshold


def cosine_logits(h1: Tensor, h2: Tensor, temperature: float) -> Tensor:
    """[2N, 2N] cosine similarities / temperature of the stacked views (float32)."""
    z = F.normalize(torch.cat([h1, h2]).float(), dim=1)
    with torch.autocast(z.device.type, enabled=False):
        return z @ z.T / temperature


def contrastive_pair_masks(n: int, duplicates: Tensor | None = None, labels: Tensor | None = None,
                           positives: str = "partner", device: torch.device | str | None = None
                           ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(allowed, positive) [2N, 2N] masks; positives: partner | spi | supcon (labels [N] needed for the last two)."""
    if device is None:
        device = next((t.device for t in (duplicates, labels) if t is not None), "cpu")
    idx = torch.arange(2 * n, device=device)
    src = idx % n
    self_mask = idx[:, None] == idx[None, :]
    partner = idx[None, :] == ((idx + n) % (2 * n))[:, None]
    same_source = src[:, None] == src[None, :]
    if duplicates is None:
        allowed = ~self_mask
    else:
        dup = duplicates.bool()[src][:, src] | same_source
        allowed = (~dup | partner) & ~self_mask
    positive = partner.clone()
    if positives == "spi":
        converted = labels.bool()[src]
        positive |= converted[:, None] & converted[None, :] & ~same_source
    elif positives == "supcon":
        lab = labels[src]
        positive |= (lab[:, None] == lab[None, :]) & ~self_mask
    elif positives != "partner":
        raise ValueError(f"positives: expected 'partner', 'spi' or 'supcon', got {positives!r}")
    return allowed, positive & allowed


def masked_contrastive_loss(logits: Tensor, allowed: Tensor, positive: Tensor) -> Tensor:
    """Mean over anchors of -mean_{q in positive(i)} log softmax_{allowed(i)}(logits[i])[q]."""
    masked = logits.masked_fill(~allowed, float("-inf"))
    log_prob = masked - torch.logsumexp(masked, dim=1, keepdim=True)
    pos_sum = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return (-pos_sum / positive.sum(dim=1).clamp(min=1)).mean()


def _positive_pairs(n: int, dup: Tensor | None, converted: Tensor | None, device) -> tuple[Tensor, Tensor]:
    """(rows, cols) of Q(i) in the 2N x 2N matrix: every partner, plus SPI's converted pairs."""
    rows = torch.arange(2 * n, device=device)
    cols = (rows + n) % (2 * n)
    if converted is None or not bool(converted.bool().any()):
        return rows, cols
    idx = converted.bool().nonzero().flatten()
    other = ~torch.eye(len(idx), dtype=torch.bool, device=device)
    if dup is not None:
        other &= ~dup[idx][:, idx]
    ia, ib = other.nonzero().unbind(1)
    a, b = idx[ia], idx[ib]
    return torch.cat([rows, a, a, a + n, a + n]), torch.cat([cols, b, b + n, b, b + n])


class _MaskedNTXent(torch.autograd.Function):
    """Mean over rows of logsumexp_{allowed}(S_i) - mean_{q in Q(i)} S_iq with S = Z Z^T / tau.

    Q is given either as index pairs (rows, cols) or as a dense [2N, 2N] weight matrix whose rows
    hold 1/|Q(i)| on Q(i). Fused so the softmax is computed once and kept for backward;
    dL/dZ = (G + G^T) Z / tau with G = softmax - weights.
    """

    @staticmethod
    def forward(ctx, z, excluded, rows, cols, dense_weights, temperature):
        with torch.autocast(z.device.type, enabled=False):  # keep the softmax in float32
            return _MaskedNTXent._forward(ctx, z, excluded, rows, cols, dense_weights, temperature)

    @staticmethod
    def _forward(ctx, z, excluded, rows, cols, dense_weights, temperature):
        s = (z / temperature) @ z.T
        if dense_weights is not None:
            pos_mean = (s * dense_weights).sum(dim=1)
            weights = dense_weights
        else:
            count = torch.zeros(len(z), device=z.device).index_add_(0, rows, torch.ones_like(rows, dtype=z.dtype))
            weights = 1.0 / count[rows]
            pos_mean = torch.zeros(len(z), device=z.device).index_add_(0, rows, s[rows, cols] * weights)
        if excluded is None:
            s.fill_diagonal_(float("-inf"))
        else:
            s.masked_fill_(excluded, float("-inf"))
        peak = s.amax(dim=1, keepdim=True)
        prob = s.sub_(peak).exp_()
        total = prob.sum(dim=1, keepdim=True)
        prob.div_(total)
        lse = total.log().squeeze(1) + peak.squeeze(1)
        ctx.save_for_backward(z, prob, rows, cols, weights)
        ctx.dense = dense_weights is not None
        ctx.temperature = temperature
        return (lse - pos_mean).mean()

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(grad.device.type, enabled=False):
            return _MaskedNTXent._backward(ctx, grad.float())

    @staticmethod
    def _backward(ctx, grad):
        z, prob, rows, cols, weights = ctx.saved_tensors
        if ctx.dense:
            g = prob.sub_(weights)
        else:
            g = prob.index_put_((rows, cols), -weights, accumulate=True)  # d loss_i / d S_ik
        g.mul_(grad / len(z))
        zt = z / ctx.temperature
        grad_z = g @ zt + g.T @ zt  # BLAS reads g.T in place; materialising g + g.T is slower
        return grad_z, None, None, None, None, None


def _excluded_views(n: int, dup: Tensor | None, device) -> Tensor:
    """[2N, 2N] bool: the anchor itself and every view of a duplicate sample, but never the partner."""
    idx = torch.arange(2 * n, device=device)
    excluded = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=device) if dup is None else dup.repeat(2, 2)
    excluded[idx, (idx + n) % (2 * n)] = False
    excluded[idx, idx] = True
    return excluded


def info_nce_loss(h1: Tensor, h2: Tensor, temperature: float, duplicates: Tensor | None = None,
                  converted: Tensor | None = None) -> Tensor:  # fmt: skip
    """NT-Xent over 2N views; FNE when `duplicates` [N, N] is given, SPI when `converted` [N] is given.

    Same value and gradient as masked_contrastive_loss(cosine_logits(...), *contrastive_pair_masks(...)),
    without building the [2N, 2N] masks (a fused autograd function; positives as index pairs).
    """
    n = h1.shape[0]
    z = F.normalize(torch.cat([h1, h2]).float(), dim=1)
    dup = None if duplicates is None else duplicates.bool()
    excluded = None if dup is None else _excluded_views(n, dup, z.device)
    rows, cols = _positive_pairs(n, dup, converted, z.device)
    return _MaskedNTXent.apply(z, excluded, rows, cols, None, float(temperature))


def supcon_loss(h1: Tensor, h2: Tensor, labels: Tensor, temperature: float,
                duplicates: Tensor | None = None) -> Tensor:  # fmt: skip
    """Supervised contrastive loss (Khosla et al., L_out): every allowed view with the anchor's label
    is a positive (the partner always is); FNE as in info_nce_loss."""
    n = h1.shape[0]
    z = F.normalize(torch.cat([h1, h2]).float(), dim=1)
    excluded = _excluded_views(n, None if duplicates is None else duplicates.bool(), z.device)
    lab = labels.repeat(2)
    weights = ((lab[:, None] == lab[None, :]) & ~excluded).float()
    weights.div_(weights.sum(dim=1, keepdim=True))
    return _MaskedNTXent.apply(z, excluded, None, None, weights, float(temperature))


def triplet_loss(h1: Tensor, h2: Tensor, margin: float, duplicates: Tensor | None = None) -> Tensor:
    """Batch-hard triplet margin loss on cosine similarity: anchor, its partner view, and the most
    similar allowed non-partner view: mean relu(margin - s(a, p) + s(a, n)); 0 for anchors without negatives.

    The hardest negative is found without gradient; s(a, p) and s(a, n) are then recomputed as row
    dot products, so backward is O(N d) instead of O(N^2 d)."""
    n = h1.shape[0]
    z = F.normalize(torch.cat([h1, h2]).float(), dim=1)
    idx = torch.arange(2 * n, device=z.device)
    partner = (idx + n) % (2 * n)
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
        sim = z @ z.T
        excluded = torch.zeros_like(sim, dtype=torch.bool) if duplicates is None else duplicates.bool().repeat(2, 2)
        excluded[idx, idx] = True
        excluded[idx, partner] = True
        sim.masked_fill_(excluded, float("-inf"))
        hardest = sim.argmax(dim=1)
        has_negative = torch.isfinite(sim[idx, hardest])
    pos = (z * z[partner]).sum(dim=1)
    neg = (z * z[hardest]).sum(dim=1)
    hinge = F.relu(margin - pos + neg)
    return torch.where(has_negative, hinge, torch.zeros_like(hinge)).mean()
