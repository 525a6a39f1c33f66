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

Grouped form: every loss also takes views [G, N, d] (with duplicates [G, N, N] and labels [G, N]):
G independent contrast sets of N samples, computed with batched matmuls in one call; the result is
the mean over all G * 2N anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def exact_duplicates(keys: Tensor) -> Tensor:
    """[..., N] duplicate keys (hash of the raw feature tuple) -> [..., N, N] bool, True where equal (diagonal too)."""
    return keys[..., :, None] == keys[..., None, :]


def cosine_duplicates(e: Tensor, threshold: float) -> Tensor:
    """The authors' code: samples whose unmasked embeddings [..., N, W] have cosine > threshold (no gradient)."""
    z = F.normalize(e.detach().float(), dim=-1)
    with torch.autocast(z.device.type, enabled=False):
        return (z @ z.transpose(-1, -2)) > threshold


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


def _grouped(*tensors: Tensor | None, dims: tuple[int, ...]) -> list[Tensor | None]:
    """Add the group dimension to ungrouped inputs: a tensor with dims[k] dimensions gets a leading 1."""
    return [t if t is None or t.dim() > d else t.unsqueeze(0) for t, d in zip(tensors, dims, strict=True)]


def _positive_pairs(groups: int, n: int, dup: Tensor | None, converted: Tensor | None, device) -> tuple[Tensor, Tensor]:
    """(rows, cols) of Q(i) for G groups of 2N views: every partner, plus SPI's converted pairs.

    rows index the G * 2N anchors (group-major), cols the 2N views of the anchor's group. SPI pairs
    are found among the converted samples only (O(k^2) for k conversions, not O(N^2)).
    """
    views = torch.arange(2 * n, device=device)
    rows = torch.arange(groups * 2 * n, device=device)
    cols = ((views + n) % (2 * n)).repeat(groups)
    if converted is None or not bool(converted.any()):
        return rows, cols
    group, idx = converted.bool().nonzero().unbind(1)
    other = (group[:, None] == group[None, :]) & (idx[:, None] != idx[None, :])
    if dup is not None:
        other &= ~dup[group[:, None], idx[:, None], idx[None, :]]
    ia, ib = other.nonzero().unbind(1)
    a = idx[ia] + group[ia] * 2 * n  # anchor rows of view 1; view 2 rows are n further
    b = idx[ib]
    return torch.cat([rows, a, a, a + n, a + n]), torch.cat([cols, b, b + n, b, b + n])


def _gram(z: Tensor, scale: float) -> Tensor:
    """scale * Z Z^T per group; one group goes through mm, which is faster than a batch-1 bmm on CPU."""
    if z.shape[0] == 1:
        return torch.addmm(z.new_empty(()), z[0], z[0].T, beta=0.0, alpha=scale).unsqueeze(0)
    return torch.baddbmm(z.new_empty(()), z, z.transpose(1, 2), beta=0.0, alpha=scale)


def _gram_backward(g: Tensor, z: Tensor) -> Tensor:
    """(G + G^T) Z per group without materialising G + G^T (BLAS reads G^T in place)."""
    if z.shape[0] == 1:
        return torch.mm(g[0], z[0]).addmm_(g[0].T, z[0]).unsqueeze(0)
    return torch.bmm(g, z).baddbmm_(g.transpose(1, 2), z)


_NORM_EPS = 1e-12  # as F.normalize
_NO_SHIFT_BOUND = 30.0  # exp(+-30) and sums of 2N of them stay far inside float32
_SMALL_GROUP = 256  # views per group (measured: 128 faster summed first, 512 and 2048 slower)


class _MaskedNTXent(torch.autograd.Function):
    """Mean over rows of logsumexp_{allowed}(S_i) - mean_{q in Q(i)} S_iq with S = Z Z^T / tau per group.

    h is [G, M, d] and Z = h / |h| row-wise (normalised inside, so backward is one fused step). Excluded
    entries besides the diagonal are a dense [G, M, M] bool mask, or (rows, cols) index pairs. Q is given
    either as index pairs (rows over all G * M anchors, cols within the group) or as a dense [G, M, M]
    weight tensor whose rows hold 1/|Q(i)| on Q(i). Fused so the softmax is computed once and kept for
    backward; dL/dZ = (G + G^T) Z / tau with G = softmax - weights.
    """

    @staticmethod
    def forward(ctx, h, excluded, rows, cols, dense_weights, temperature):
        with torch.autocast(h.device.type, enabled=False):  # keep the softmax in float32
            return _MaskedNTXent._forward(ctx, h.float(), excluded, rows, cols, dense_weights, temperature)

    @staticmethod
    def _forward(ctx, h, excluded, rows, cols, dense_weights, temperature):
        groups, m, _ = h.shape
        norm = h.norm(dim=-1, keepdim=True).clamp_min_(_NORM_EPS)
        z = h / norm
        s = _gram(z, 1.0 / temperature)
        flat = s.view(groups * m, m)
        if dense_weights is not None:
            weights = dense_weights.reshape(groups * m, m)
            pos_mean = (flat * weights).sum(dim=1)
        else:
            count = z.new_zeros(groups * m).index_add_(0, rows, torch.ones_like(rows, dtype=z.dtype))
            weights = 1.0 / count[rows]
            pos_mean = z.new_zeros(groups * m).index_add_(0, rows, flat[rows, cols] * weights)
        s.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        if isinstance(excluded, Tensor):
            flat.masked_fill_(excluded.reshape(groups * m, m), float("-inf"))
        elif excluded is not None:
            flat[excluded] = float("-inf")
        no_shift = 1.0 / temperature <= _NO_SHIFT_BOUND  # cosines bound |S| by 1/tau: exp cannot overflow
        # Symmetric: S and every exclusion are, so softmax^T = exp(S) / total_k and G + G^T needs no transpose.
        ctx.symmetric = dense_weights is None and no_shift
        if no_shift:
            prob = flat.exp_()
            total = prob.sum(dim=1, keepdim=True)
            lse = total.log().squeeze(1)
        else:
            peak = flat.amax(dim=1, keepdim=True)
            prob = flat.sub_(peak).exp_()
            total = prob.sum(dim=1, keepdim=True)
            lse = total.log().squeeze(1) + peak.squeeze(1)
        if ctx.symmetric:
            ctx.save_for_backward(z, norm, prob, rows, cols, weights, total.reciprocal_())
        else:
            prob.div_(total)
            ctx.save_for_backward(z, norm, prob, rows, cols, weights)
        ctx.dense = dense_weights is not None
        ctx.temperature = temperature
        return (lse - pos_mean).mean()

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(grad.device.type, enabled=False):
            return _MaskedNTXent._backward(ctx, grad.float())

    @staticmethod
    def _backward(ctx, grad):
        if ctx.symmetric:
            return _MaskedNTXent._symmetric_backward(ctx, grad)
        z, norm, prob, rows, cols, weights = ctx.saved_tensors
        if ctx.dense:
            g = prob.sub_(weights)
        else:
            g = prob.index_put_((rows, cols), -weights, accumulate=True)  # d loss_i / d S_ik (unscaled)
        g = g.view(z.shape[0], z.shape[1], z.shape[1])
        if z.shape[1] <= _SMALL_GROUP:  # blocks fit in cache: one matmul with G + G^T is cheaper
            grad_z = torch.bmm(g + g.transpose(1, 2), z)
        else:  # materialising G + G^T for big blocks is slower
            grad_z = _gram_backward(g, z)
        return _MaskedNTXent._through_normalisation(ctx, grad, grad_z, z, norm, len(prob))

    @staticmethod
    def _symmetric_backward(ctx, grad):
        """G + G^T = E (1/total_i + 1/total_k) - (W + W^T), E = exp(S) masked (symmetric)."""
        z, norm, exp_s, rows, cols, weights, inv_total = ctx.saved_tensors
        groups, m = z.shape[0], z.shape[1]
        inv = inv_total.view(groups, m)
        g = exp_s.view(groups, m, m).mul_(inv[:, :, None] + inv[:, None, :]).view(groups * m, m)
        anchor_in_group = rows % m
        g.index_put_((rows, cols), -weights, accumulate=True)
        g.index_put_((rows - anchor_in_group + cols, anchor_in_group), -weights, accumulate=True)  # W^T
        grad_z = torch.bmm(g.view(groups, m, m), z)
        return _MaskedNTXent._through_normalisation(ctx, grad, grad_z, z, norm, groups * m)

    @staticmethod
    def _through_normalisation(ctx, grad, grad_z, z, norm, anchors: int):
        grad_z.mul_(grad / (anchors * ctx.temperature))
        grad_h = grad_z.sub_(z * (z * grad_z).sum(dim=-1, keepdim=True)).div_(norm)  # through z = h / |h|
        return grad_h, None, None, None, None, None


def _excluded_views(n: int, dup: Tensor | None, groups: int, device) -> Tensor:
    """[G, 2N, 2N] bool: the anchor itself and every view of a duplicate sample, but never the partner."""
    excluded = torch.eye(2 * n, dtype=torch.bool, device=device).repeat(groups, 1, 1)
    if dup is not None:
        rows, cols = _duplicate_view_pairs(n, dup.bool())
        excluded.view(groups * 2 * n, 2 * n)[rows, cols] = True
    return excluded


def _duplicate_view_pairs(n: int, dup: Tensor) -> tuple[Tensor, Tensor]:
    """(rows over G * 2N anchors, cols within the group) of every view pair of two different duplicate
    samples, as indices (duplicates are rare); never an anchor's partner, which is a view of the same sample."""
    group, a, b = (dup & ~torch.eye(n, dtype=torch.bool, device=dup.device)).nonzero().unbind(1)
    rows = torch.cat([a, a, a + n, a + n]) + group.repeat(4) * 2 * n
    return rows, torch.cat([b, b + n, b, b + n])


def info_nce_loss(h1: Tensor, h2: Tensor, temperature: float, duplicates: Tensor | None = None,
                  converted: Tensor | None = None) -> Tensor:  # fmt: skip
    """NT-Xent over 2N views; FNE when `duplicates` [N, N] is given, SPI when `converted` [N] is given.

    Same value and gradient as masked_contrastive_loss(cosine_logits(...), *contrastive_pair_masks(...)),
    without building the [2N, 2N] positive mask (a fused autograd function; positives as index pairs).
    """
    h1, h2, duplicates, converted = _grouped(h1, h2, duplicates, converted, dims=(2, 2, 2, 1))
    return info_nce_of_views(torch.cat([h1, h2], dim=1), temperature, duplicates, converted)


def info_nce_of_views(views: Tensor, temperature: float, duplicates: Tensor | None = None,
                      converted: Tensor | None = None) -> Tensor:  # fmt: skip
    """info_nce_loss of views [G, 2N, d] already stacked per group (view 1 of the N samples, then view 2)."""
    groups, n = views.shape[0], views.shape[1] // 2
    dup = None if duplicates is None else duplicates.bool()
    excluded = None if dup is None else _duplicate_view_pairs(n, dup)
    rows, cols = _positive_pairs(groups, n, dup, converted, views.device)
    return _MaskedNTXent.apply(views, excluded, rows, cols, None, float(temperature))


def supcon_loss(h1: Tensor, h2: Tensor, labels: Tensor, temperature: float,
                duplicates: Tensor | None = None) -> Tensor:  # fmt: skip
    """Supervised contrastive loss (Khosla et al., L_out): every allowed view with the anchor's label
    is a positive (the partner always is); FNE as in info_nce_loss."""
    h1, h2, labels, duplicates = _grouped(h1, h2, labels, duplicates, dims=(2, 2, 1, 2))
    return supcon_of_views(torch.cat([h1, h2], dim=1), labels, temperature, duplicates)


def supcon_of_views(views: Tensor, labels: Tensor, temperature: float, duplicates: Tensor | None = None) -> Tensor:
    """supcon_loss of views [G, 2N, d] stacked per group; labels [G, N], duplicates [G, N, N]."""
    groups, n = views.shape[0], views.shape[1] // 2
    excluded = _excluded_views(n, None if duplicates is None else duplicates.bool(), groups, views.device)
    lab = labels.repeat(1, 2)
    weights = ((lab[:, :, None] == lab[:, None, :]) & ~excluded).float()
    weights.div_(weights.sum(dim=-1, keepdim=True))
    return _MaskedNTXent.apply(views, excluded, None, None, weights, float(temperature))


def triplet_loss(h1: Tensor, h2: Tensor, margin: float, duplicates: Tensor | None = None) -> Tensor:
    """Batch-hard triplet margin loss on cosine similarity: anchor, its partner view, and the most
    similar allowed non-partner view: mean relu(margin - s(a, p) + s(a, n)); 0 for anchors without negatives.

    The hardest negative is found without gradient; s(a, p) and s(a, n) are then recomputed as row
    dot products, so backward is O(N d) instead of O(N^2 d)."""
    h1, h2, duplicates = _grouped(h1, h2, duplicates, dims=(2, 2, 2))
    return triplet_of_views(torch.cat([h1, h2], dim=1), margin, duplicates)


def triplet_of_views(views: Tensor, margin: float, duplicates: Tensor | None = None) -> Tensor:
    """triplet_loss of views [G, 2N, d] stacked per group; duplicates [G, N, N]."""
    groups, n = views.shape[0], views.shape[1] // 2
    z = F.normalize(views.float(), dim=-1)
    idx = torch.arange(2 * n, device=z.device)
    partner = (idx + n) % (2 * n)
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
        sim = torch.bmm(z, z.transpose(1, 2))
        excluded = _excluded_views(n, None if duplicates is None else duplicates.bool(), groups, z.device)
        excluded[:, idx, partner] = True
        sim.masked_fill_(excluded, float("-inf"))
        hardest = sim.argmax(dim=-1, keepdim=True)
        has_negative = torch.isfinite(sim.gather(-1, hardest)).squeeze(-1)
    pos = (z * z[:, partner]).sum(dim=-1)
    neg = (z * z.gather(1, hardest.expand(-1, -1, z.shape[-1]))).sum(dim=-1)
    hinge = F.relu(margin - pos + neg)
    return torch.where(has_negative, hinge, torch.zeros_like(hinge)).mean()
