"""RowSparseAdam: the same updates as torch's SparseAdam, for sparse and dense gradients, and a clean state round trip."""

from __future__ import annotations

import pytest
import torch

from cvr.train.optim import RowSparseAdam


def twin_embeddings(rows: int = 400, dim: int = 6) -> tuple[torch.nn.Embedding, torch.nn.Embedding]:
    torch.manual_seed(0)
    a, b = torch.nn.Embedding(rows, dim, sparse=True), torch.nn.Embedding(rows, dim, sparse=True)
    b.load_state_dict(a.state_dict())
    return a, b


def test_matches_torch_sparse_adam_with_repeated_ids():
    reference, ours = twin_embeddings()
    opt_ref = torch.optim.SparseAdam(reference.parameters(), lr=0.05)
    opt_ours = RowSparseAdam(ours.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        ids = torch.randint(0, 60, (128,), generator=g)  # many repeats, most rows never touched
        for emb, opt in ((reference, opt_ref), (ours, opt_ours)):
            opt.zero_grad()
            (emb(ids).pow(2).sum() + emb(ids[:7]).sum()).backward()
            opt.step()
    torch.testing.assert_close(ours.weight, reference.weight, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.weight[60:], twin_embeddings()[0].weight[60:])  # untouched rows never move


def test_dense_gradient_is_applied_as_sparse_rows():
    _, ours = twin_embeddings()
    before = ours.weight.detach().clone()
    opt = RowSparseAdam(ours.parameters(), lr=0.1)
    ours.weight.grad = torch.zeros_like(ours.weight)
    ours.weight.grad[3] = 1.0
    opt.step()
    moved = (ours.weight != before).any(dim=1)
    assert moved.nonzero().flatten().tolist() == [3]


def test_state_round_trip_and_bad_lr():
    _, ours = twin_embeddings()
    opt = RowSparseAdam(ours.parameters(), lr=0.1)
    opt.zero_grad()
    ours(torch.tensor([1, 2, 2])).sum().backward()
    opt.step()
    restored = RowSparseAdam(ours.parameters(), lr=0.1)
    restored.load_state_dict(opt.state_dict())
    state = restored.state[ours.weight]
    assert float(state["step"]) == 1.0 and torch.equal(state["exp_avg"], opt.state[ours.weight]["exp_avg"])
    with pytest.raises(ValueError, match="lr must be > 0"):
        RowSparseAdam(ours.parameters(), lr=0.0)


@pytest.mark.parametrize(
    "rows",
    [
        [2, 5, 9, 31],  # unique and sorted, flag dropped (what the coalescing hook hands the optimizer)
        [9, 2, 31, 2, 5, 9],  # repeated and unsorted (what an allgather of two ranks' rows hands it)
    ],
)
def test_uncoalesced_gradients_match_torch_sparse_adam(rows):
    reference, ours = twin_embeddings()
    opt_ref, opt_ours = torch.optim.SparseAdam(reference.parameters(), lr=0.05), RowSparseAdam(ours.parameters(), lr=0.05)  # fmt: skip
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        values = torch.randn(len(rows), 6, generator=g)
        for emb, opt in ((reference, opt_ref), (ours, opt_ours)):
            grad = torch.sparse_coo_tensor(torch.tensor([rows]), values.clone(), emb.weight.shape)
            assert not grad.is_coalesced()
            emb.weight.grad = grad
            opt.step()
    torch.testing.assert_close(ours.weight, reference.weight, rtol=1e-5, atol=1e-6)
