"""Contrastive losses against hand-written references on tiny batches (explicit loops, float64)."""

from __future__ import annotations

import math

import pytest
import torch

from cvr.losses import (
    complementary_masks,
    contrastive_pair_masks,
    cosine_duplicates,
    exact_duplicates,
    field_split_masks,
    independent_masks,
    info_nce_loss,
    supcon_loss,
    triplet_loss,
)


def views(n: int, dim: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def reference_loss(h1, h2, tau, denominators: dict[int, list[int]], positives: dict[int, list[int]]) -> float:
    """-1/2N sum_i 1/|P(i)| sum_{p in P(i)} log(exp(s_ip/tau) / sum_{k in D(i)} exp(s_ik/tau))."""
    z = torch.cat([h1, h2])
    total = 0.0
    for i in range(len(z)):
        denom = sum(math.exp(cos(z[i], z[k]) / tau) for k in denominators[i])
        terms = [math.log(math.exp(cos(z[i], z[p]) / tau) / denom) for p in positives[i]]
        total += -sum(terms) / len(terms)
    return total / len(z)


def partner(i: int, n: int) -> int:
    return (i + n) % (2 * n)


def test_nt_xent_equals_direct_formula():
    n, tau = 4, 0.5
    h1, h2 = views(n)
    denominators = {i: [k for k in range(2 * n) if k != i] for i in range(2 * n)}
    positives = {i: [partner(i, n)] for i in range(2 * n)}
    expected = reference_loss(h1, h2, tau, denominators, positives)
    assert info_nce_loss(h1, h2, tau).item() == pytest.approx(expected, rel=1e-5)


def test_fne_removes_exactly_the_duplicate_columns_and_keeps_the_partner():
    n, tau = 4, 0.7
    h1, h2 = views(n, seed=1)
    keys = torch.tensor([11, 22, 11, 33])  # samples 0 and 2 are duplicates
    allowed, positive = contrastive_pair_masks(n, exact_duplicates(keys))
    # Hand-listed denominators: views are 0..3 (view 1) and 4..7 (view 2) of samples 0..3.
    denominators = {
        0: [4, 1, 5, 3, 7],  # not 0 (self), not 2 / 6 (duplicate sample 2); partner 4 kept
        1: [5, 0, 4, 2, 6, 3, 7],
        2: [6, 1, 5, 3, 7],
        3: [7, 0, 4, 1, 5, 2, 6],
        4: [0, 1, 5, 3, 7],
        5: [1, 0, 4, 2, 6, 3, 7],
        6: [2, 1, 5, 3, 7],
        7: [3, 0, 4, 1, 5, 2, 6],
    }
    for i in range(2 * n):
        assert sorted(allowed[i].nonzero().flatten().tolist()) == sorted(denominators[i]), f"anchor {i}"
        assert positive[i].nonzero().flatten().tolist() == [partner(i, n)]
    positives = {i: [partner(i, n)] for i in range(2 * n)}
    expected = reference_loss(h1, h2, tau, denominators, positives)
    assert info_nce_loss(h1, h2, tau, duplicates=exact_duplicates(keys)).item() == pytest.approx(expected, rel=1e-5)
    assert info_nce_loss(h1, h2, tau).item() != pytest.approx(expected, rel=1e-3)


def test_spi_positives_and_per_anchor_averaging():
    n, tau = 4, 0.5
    h1, h2 = views(n, seed=2)
    converted = torch.tensor([1, 0, 1, 1])
    allowed, positive = contrastive_pair_masks(n, None, converted, "spi")
    positives = {
        0: [4, 2, 6, 3, 7],
        1: [5],
        2: [6, 0, 4, 3, 7],
        3: [7, 0, 4, 2, 6],
        4: [0, 2, 6, 3, 7],
        5: [1],
        6: [2, 0, 4, 3, 7],
        7: [3, 0, 4, 2, 6],
    }
    for i in range(2 * n):
        assert sorted(positive[i].nonzero().flatten().tolist()) == sorted(positives[i]), f"anchor {i}"
    denominators = {i: [k for k in range(2 * n) if k != i] for i in range(2 * n)}
    expected = reference_loss(h1, h2, tau, denominators, positives)
    assert info_nce_loss(h1, h2, tau, converted=converted).item() == pytest.approx(expected, rel=1e-5)


def test_spi_with_fne_drops_a_converted_duplicate_from_the_positives():
    n, tau = 3, 1.0
    h1, h2 = views(n, seed=3)
    keys = torch.tensor([5, 5, 9])  # samples 0 and 1 are duplicates, all three converted
    converted = torch.tensor([1, 1, 1])
    denominators = {0: [3, 2, 5], 1: [4, 2, 5], 2: [5, 0, 3, 1, 4], 3: [0, 2, 5], 4: [1, 2, 5], 5: [2, 0, 3, 1, 4]}
    positives = {0: [3, 2, 5], 1: [4, 2, 5], 2: [5, 0, 3, 1, 4], 3: [0, 2, 5], 4: [1, 2, 5], 5: [2, 0, 3, 1, 4]}
    expected = reference_loss(h1, h2, tau, denominators, positives)
    got = info_nce_loss(h1, h2, tau, duplicates=exact_duplicates(keys), converted=converted)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_batch_without_conversion_equals_plain_nt_xent():
    h1, h2 = views(5, seed=4)
    none_converted = torch.zeros(5, dtype=torch.long)
    assert info_nce_loss(h1, h2, 0.3, converted=none_converted).item() == pytest.approx(
        info_nce_loss(h1, h2, 0.3).item(), rel=1e-6
    )


def test_all_duplicates_gives_zero_loss_without_nan():
    h1, h2 = views(4, seed=5)
    h1.requires_grad_(True)
    keys = torch.full((4,), 7)
    converted = torch.tensor([1, 1, 0, 1])
    for loss in (
        info_nce_loss(h1, h2, 0.5, duplicates=exact_duplicates(keys), converted=converted),
        supcon_loss(h1, h2, converted, 0.5, duplicates=exact_duplicates(keys)),
        triplet_loss(h1, h2, 0.5, duplicates=exact_duplicates(keys)),
    ):
        assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
        (grad,) = torch.autograd.grad(loss, h1)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("tau", [1e-2, 12.0, 1e4, 1e8])
def test_stable_at_extreme_temperatures(tau):
    n = 6
    h1, h2 = views(n, seed=6)
    h1 = h1 * 1e3  # large norms must not matter (cosine)
    denominators = {i: [k for k in range(2 * n) if k != i] for i in range(2 * n)}
    positives = {i: [partner(i, n)] for i in range(2 * n)}
    got = info_nce_loss(h1, h2, tau)
    assert torch.isfinite(got)
    if tau >= 1e4:  # flat softmax: every allowed view is equally likely
        assert got.item() == pytest.approx(math.log(2 * n - 1), rel=1e-4)
    else:
        assert got.item() == pytest.approx(reference_loss(h1, h2, tau, denominators, positives), rel=1e-4)


def test_bf16_inputs_are_stable_and_close_to_float32():
    h1, h2 = views(16, dim=8, seed=7)
    keys = torch.tensor([1, 2, 3, 1] * 4)
    converted = torch.tensor([1, 0, 0, 0] * 4)
    a, b = h1.bfloat16().requires_grad_(True), h2.bfloat16()
    loss16 = info_nce_loss(a, b, 0.05, duplicates=exact_duplicates(keys), converted=converted)
    loss32 = info_nce_loss(h1, h2, 0.05, duplicates=exact_duplicates(keys), converted=converted)
    assert torch.isfinite(loss16)
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    (grad,) = torch.autograd.grad(loss16, a)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


def test_supcon_matches_reference():
    n, tau = 3, 0.5
    h1, h2 = views(n, seed=8)
    labels = torch.tensor([1, 0, 1])
    denominators = {i: [k for k in range(2 * n) if k != i] for i in range(2 * n)}
    positives = {0: [3, 2, 5], 1: [4], 2: [5, 0, 3], 3: [0, 2, 5], 4: [1], 5: [2, 0, 3]}
    assert supcon_loss(h1, h2, labels, tau).item() == pytest.approx(
        reference_loss(h1, h2, tau, denominators, positives), rel=1e-5
    )


def test_triplet_uses_the_partner_and_the_hardest_allowed_negative():
    n, margin = 3, 0.5
    h1, h2 = views(n, seed=9)
    z = torch.cat([h1, h2])
    keys = torch.tensor([1, 2, 1])
    dup_sets = {0: {0, 2}, 1: {1}, 2: {0, 2}}
    expected = 0.0
    for i in range(2 * n):
        negatives = [k for k in range(2 * n) if k % n not in dup_sets[i % n]]
        hardest = max(cos(z[i], z[k]) for k in negatives)
        expected += max(0.0, margin - cos(z[i], z[partner(i, n)]) + hardest)
    expected /= 2 * n
    got = triplet_loss(h1, h2, margin, duplicates=exact_duplicates(keys))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_cosine_duplicates_flags_near_identical_rows_only():
    e = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    dup = cosine_duplicates(e, 0.9)
    assert dup.tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [False, False, True, False],
        [False, False, False, True],
    ]


def test_view_masks():
    g = torch.Generator().manual_seed(0)
    m1, m2 = complementary_masks(1000, generator=g)
    assert m1.shape == (1, 1000) and torch.equal(m1 + m2, torch.ones(1, 1000))
    assert 400 < m1.sum().item() < 600
    a, b = independent_masks(50, 200, 0.3, generator=g)
    assert a.shape == (50, 200) and not torch.equal(a, b)
    assert 0.65 < a.mean().item() < 0.75
    groups = [(0, 2), (2, 4), (4, 6), (6, 9)]
    f1, f2 = field_split_masks(groups, 9, generator=g)
    assert torch.equal(f1 + f2, torch.ones(1, 9))
    for start, end in groups:  # each field goes whole to exactly one view
        assert f1[0, start:end].unique().numel() == 1
    assert f1.sum().item() in (4.0, 5.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blockwise_info_nce_equals_the_generic_masked_loss(seed):
    from cvr.losses import cosine_logits, masked_contrastive_loss

    g = torch.Generator().manual_seed(seed)
    n = 40
    h1, h2 = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    keys = torch.randint(0, 25, (n,), generator=g)
    converted = (torch.rand(n, generator=g) < 0.3).long()
    for dup, conv in (
        (None, None),
        (exact_duplicates(keys), None),
        (None, converted),
        (exact_duplicates(keys), converted),
    ):
        a = h1.clone().requires_grad_(True)
        allowed, positive = contrastive_pair_masks(n, dup, conv, "spi" if conv is not None else "partner")
        generic = masked_contrastive_loss(cosine_logits(a, h2, 0.2), allowed, positive)
        (g_generic,) = torch.autograd.grad(generic, a)
        fast = info_nce_loss(a, h2, 0.2, duplicates=dup, converted=conv)
        (g_fast,) = torch.autograd.grad(fast, a)
        assert fast.item() == pytest.approx(generic.item(), rel=1e-5)
        torch.testing.assert_close(g_fast, g_generic, rtol=1e-4, atol=1e-6)


def test_supcon_equals_the_generic_masked_loss_with_fne():
    from cvr.losses import cosine_logits, masked_contrastive_loss

    g = torch.Generator().manual_seed(11)
    n = 30
    h1, h2 = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    labels = (torch.rand(n, generator=g) < 0.3).long()
    dup = exact_duplicates(torch.randint(0, 20, (n,), generator=g))
    a = h1.clone().requires_grad_(True)
    allowed, positive = contrastive_pair_masks(n, dup, labels, "supcon")
    generic = masked_contrastive_loss(cosine_logits(a, h2, 0.3), allowed, positive)
    (g_generic,) = torch.autograd.grad(generic, a)
    fused = supcon_loss(a, h2, labels, 0.3, duplicates=dup)
    (g_fused,) = torch.autograd.grad(fused, a)
    assert fused.item() == pytest.approx(generic.item(), rel=1e-5)
    torch.testing.assert_close(g_fused, g_generic, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["infonce", "spi", "supcon", "triplet"])
def test_grouped_losses_equal_the_mean_of_per_group_losses(loss):
    g = torch.Generator().manual_seed(5)
    groups, n = 4, 9
    h1, h2 = torch.randn(groups, n, 6, generator=g), torch.randn(groups, n, 6, generator=g)
    dup = exact_duplicates(torch.randint(0, 6, (groups, n), generator=g))
    labels = (torch.rand(groups, n, generator=g) < 0.4).long()

    def one(a, b, d, lab):
        if loss == "triplet":
            return triplet_loss(a, b, 0.5, d)
        if loss == "supcon":
            return supcon_loss(a, b, lab, 0.3, d)
        return info_nce_loss(a, b, 0.3, d, lab if loss == "spi" else None)

    a = h1.clone().requires_grad_(True)
    grouped = one(a, h2, dup, labels)
    (g_grouped,) = torch.autograd.grad(grouped, a)
    b = h1.clone().requires_grad_(True)
    looped = sum(one(b[k], h2[k], dup[k], labels[k]) for k in range(groups)) / groups
    (g_looped,) = torch.autograd.grad(looped, b)
    assert grouped.item() == pytest.approx(looped.item(), rel=1e-5)
    torch.testing.assert_close(g_grouped, g_looped, rtol=1e-4, atol=1e-6)
    assert dup.sum() > groups * n  # the draw holds duplicates, so FNE is exercised
