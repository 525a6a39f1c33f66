"""The behaviour-graph models: composition vs hand formulas, valid probabilities, losses, gradients, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cvr.models import BehaviourGraph, build_model, export_scoring_module, load_model_config

MODEL_NAMES = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "conf" / "models").glob("*.yaml"))
BUCKETS = [40, 25, 10, 7]


def make_batch(n: int = 64, num_dense: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    click = (torch.rand(n, generator=g) < 0.5).float()
    click[:2] = 1.0
    conversion = click * (torch.rand(n, generator=g) < 0.4).float()
    conversion[:2] = 1.0  # at least two converted samples (SPI fires)
    dup_key = torch.randint(0, max(n // 2, 1), (n,), generator=g)
    return {
        "sparse": torch.stack([torch.randint(0, b, (n,), generator=g) for b in BUCKETS], dim=1),
        "dense": torch.randn(n, num_dense, generator=g),
        "click": click,
        "micro": click * (torch.rand(n, generator=g) < 0.5).float(),
        "macro": click * (torch.rand(n, generator=g) < 0.4).float(),
        "conversion": conversion,
        "dup_key": dup_key,
        "user_key": torch.randint(0, 5, (n,), generator=g),
    }


def build(name: str, num_dense: int = 3, overrides: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(load_model_config(name, overrides), BUCKETS, num_dense)


def fixed_heads(names: list[str], n: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {h: torch.rand(n, generator=g, dtype=torch.float64) for h in names}


def test_hm3_composition_matches_the_hand_formula():
    graph = BehaviourGraph(load_model_config("hm3")["graph"])
    assert graph.head_names == ["q1", "q2", "q3", "q4", "q5", "q6"]
    q = fixed_heads(graph.head_names)
    r = q["q2"] * q["q3"] + (1 - q["q2"]) * q["q4"]
    cvr = r * q["q5"] + (1 - r) * q["q6"]
    torch.testing.assert_close(graph.compose(q, "cvr"), cvr)
    torch.testing.assert_close(graph.compose(q, "ctcvr"), q["q1"] * cvr)
    torch.testing.assert_close(graph.compose(q, "micro"), q["q1"] * q["q2"])
    torch.testing.assert_close(graph.compose(q, "macro"), q["q1"] * r)
    torch.testing.assert_close(graph.compose(q, "ctr"), q["q1"])


def test_hm3_composition_on_one_hand_computed_sample():
    graph = BehaviourGraph(load_model_config("hm3")["graph"])
    values = {"q1": 0.1, "q2": 0.5, "q3": 0.4, "q4": 0.2, "q5": 0.3, "q6": 0.05}
    q = {k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}
    # r = 0.5*0.4 + 0.5*0.2 = 0.3 ; pCVR = 0.3*0.3 + 0.7*0.05 = 0.125 ; pCTCVR = 0.0125
    assert graph.compose(q, "cvr").item() == pytest.approx(0.125)
    assert graph.compose(q, "ctcvr").item() == pytest.approx(0.0125)
    assert graph.compose(q, "macro").item() == pytest.approx(0.03)


def test_esm2_and_esmm_compositions():
    esm2 = BehaviourGraph(load_model_config("esm2")["graph"])
    y = fixed_heads(esm2.head_names, seed=1)
    cvr = y["y2"] * y["y3"] + (1 - y["y2"]) * y["y4"]
    torch.testing.assert_close(esm2.compose(y, "cvr"), cvr)
    torch.testing.assert_close(esm2.compose(y, "ctcvr"), y["y1"] * cvr)
    torch.testing.assert_close(esm2.compose(y, "ctavr"), y["y1"] * y["y2"])
    esmm = BehaviourGraph(load_model_config("esmm")["graph"])
    p = fixed_heads(esmm.head_names, seed=2)
    torch.testing.assert_close(esmm.compose(p, "ctcvr"), p["ctr"] * p["cvr"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_outputs_valid_probabilities_and_gradients_reach_every_head(name):
    model = build(name)
    model.train()
    batch = make_batch()
    out = model(batch)
    for key in ("ctr", "cvr", "ctcvr"):
        assert key in out.probs
    for key, p in out.probs.items():
        assert p.shape == (64,) and p.dtype == torch.float32, key
        assert bool(((p > 0) & (p < 1)).all()), key
    assert torch.isfinite(out.loss)
    if model.contrastive is not None:
        assert "contrastive" in out.losses
    out.loss.backward()
    for head_name, head in model.heads.items():
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: head {head_name} got no gradient"
    for table in model.sparse_embedding_parameters():
        assert table.grad is not None and _values(table.grad).abs().sum() > 0, f"{name}: embeddings got no gradient"
    if model.contrastive is not None:
        assert all(p.grad.abs().sum() > 0 for p in model.contrastive.encoder.parameters())


@pytest.mark.parametrize("name", ["esmm", "hm3"])
def test_outputs_stay_inside_zero_one_for_saturated_heads(name):
    model = build(name).eval()
    for bias in (80.0, -80.0):
        for head in model.heads.values():
            torch.nn.init.constant_(head[-1].bias, bias)
        out = model(make_batch())
        for key, p in out.probs.items():
            assert bool(((p > 0) & (p < 1)).all()), (key, bias)
        assert torch.isfinite(out.loss)


def bce(target: np.ndarray, p: np.ndarray) -> np.ndarray:
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def test_esmm_loss_is_the_impression_space_cross_entropy():
    model = build("esmm").eval()
    batch = make_batch()
    out = model(batch)
    ctr, ctcvr = out.probs["ctr"].detach().double().numpy(), out.probs["ctcvr"].detach().double().numpy()
    click, conv = batch["click"].numpy(), batch["conversion"].numpy()
    assert out.losses["ctr"].item() == pytest.approx(bce(click, ctr).mean(), rel=1e-5)
    assert out.losses["ctcvr"].item() == pytest.approx(bce(click * conv, ctcvr).mean(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.losses["ctr"].item() + out.losses["ctcvr"].item(), rel=1e-6)


def test_naive_cvr_loss_uses_clicked_samples_only():
    model = build("naive_cvr").eval()
    batch = make_batch()
    out = model(batch)
    clicked = batch["click"].numpy() > 0.5
    cvr = out.probs["cvr"].detach().double().numpy()
    expected = bce(batch["conversion"].numpy()[clicked], cvr[clicked]).mean()
    assert out.losses["cvr"].item() == pytest.approx(expected, rel=1e-5)
    assert set(out.losses) == {"ctr", "cvr"}
    no_clicks = {**batch, "click": torch.zeros(64), "conversion": torch.zeros(64)}
    assert model(no_clicks).losses["cvr"].item() == 0.0
    # Unshared embeddings: the CVR head's tables get no gradient from the CTR loss.
    model.train()
    model(batch).losses["ctr"].backward()
    assert model.head_inputs["cvr"].embedding.table.weight.grad is None


def test_detach_heads_stops_the_ctr_gradient_of_the_ctcvr_loss():
    batch = make_batch()
    for detach, expect_grad in (([], True), (["ctr"], False)):
        model = build("esmm", overrides={"losses": {"ctcvr": {"detach_heads": detach}}})
        model(batch).losses["ctcvr"].backward()
        got = model.heads["ctr"][0].weight.grad
        assert (got is not None and got.abs().sum() > 0) == expect_grad


def test_contrastive_loss_is_weighted_by_alpha_and_skipped_in_eval():
    model = build("cl4cvr", overrides={"contrastive": {"alpha": 0.5}})
    batch = make_batch()
    torch.manual_seed(1)
    out = model.train()(batch)
    supervised = out.losses["ctr"] + out.losses["ctcvr"]
    assert out.loss.item() == pytest.approx((supervised + 0.5 * out.losses["contrastive"]).item(), rel=1e-6)
    assert "contrastive" not in model.eval()(batch).losses


def test_fne_exact_needs_dup_key():
    model = build("cl4cvr").train()
    batch = make_batch()
    del batch["dup_key"]
    with pytest.raises(ValueError, match="dup_key"):
        model(batch)


def test_scoring_without_labels_returns_no_losses():
    model = build("hm3").eval()
    batch = make_batch()
    out = model({"sparse": batch["sparse"], "dense": batch["dense"]})
    assert out.losses == {} and out.loss is None
    assert set(out.probs) == {"ctr", "cvr", "ctcvr", "micro", "macro"}
    with pytest.raises(ValueError, match="missing label"):
        model({"sparse": batch["sparse"], "dense": batch["dense"], "click": batch["click"]})


def test_bad_inputs_name_the_field_and_value():
    model = build("esmm", overrides=None)
    model_named = build_model(load_model_config("esmm"), BUCKETS, 3, field_names=["user", "item", "shop", "hour"])
    batch = make_batch()
    batch["sparse"][5, 2] = 10  # buckets of field 2 = 10
    with pytest.raises(ValueError, match=r"field 2 has id 10 at row 5, expected 0 <= id < 10"):
        model(batch)
    with pytest.raises(ValueError, match="shop has id 10"):
        model_named(batch)
    good = make_batch()
    with pytest.raises(ValueError, match=r"'dense': expected shape \[B, 3\]"):
        model({**good, "dense": torch.zeros(64, 2)})
    with pytest.raises(ValueError, match=r"'sparse': expected shape \[B, 4\]"):
        model({**good, "sparse": good["sparse"][:, :3]})


def test_sparse_embeddings_and_parameter_split():
    model = build("esmm", overrides={"embedding": {"sparse": True}})
    sparse_params = model.sparse_embedding_parameters()
    dense_params = model.dense_parameters()
    assert model.uses_sparse_gradients
    assert {id(p) for p in sparse_params}.isdisjoint(id(p) for p in dense_params)
    assert len(sparse_params) + len(dense_params) == len(list(model.parameters()))
    model(make_batch()).loss.backward()
    assert sparse_params[0].grad.is_sparse
    torch.optim.SparseAdam(sparse_params, lr=0.01).step()
    torch.optim.Adam(dense_params, lr=0.01).step()


def test_feature_dropout_only_while_training():
    model = build("fd", overrides={"feature_dropout": 0.5})
    batch = make_batch()
    model.eval()
    first, second = model(batch).probs["ctr"], model(batch).probs["ctr"]
    torch.testing.assert_close(first, second)
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(batch).probs["ctr"], first)


def test_dense_modes_and_no_dense_features():
    batch = make_batch(num_dense=0)
    for mode in ("linear", "tanh", "none"):
        model = build("esm2", num_dense=0, overrides={"dense": {"mode": mode}})
        assert torch.isfinite(model(batch).loss)
    model = build("esmm", num_dense=0)
    assert torch.isfinite(model({k: v for k, v in batch.items() if k != "dense"}).loss)


@pytest.mark.parametrize("name,num_dense", [("esmm", 3), ("hm3", 3), ("cl4cvr", 3), ("naive_cvr", 0)])
def test_torchscript_export_matches_eager_after_save_and_load(name, num_dense, tmp_path):
    model = build(name, num_dense=num_dense)
    model.train()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)  # handles sparse and dense gradients
    for seed in range(3):  # a few steps so the weights are not the initial ones
        opt.zero_grad()
        model(make_batch(num_dense=num_dense, seed=seed)).loss.backward()
        opt.step()
    scripted = export_scoring_module(model, make_batch(16, num_dense=num_dense))
    assert model.training  # export restores the mode
    torch.jit.save(scripted, tmp_path / "scoring.pt")
    loaded = torch.jit.load(tmp_path / "scoring.pt")
    model.eval()
    for n in (1, 7, 50):
        batch = make_batch(n, num_dense=num_dense, seed=10 + n)
        with torch.no_grad():
            eager = model(batch).probs
            got = loaded(batch["sparse"], batch["dense"])
        assert got.shape == (n, 3)
        expected = torch.stack([eager["ctr"], eager["cvr"], eager["ctcvr"]], dim=1)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_complementary_encoding_equals_encoding_the_masked_views():
    model = build("cl4cvr")
    branch = model.contrastive
    e = torch.randn(9, model.inputs.width, requires_grad=True)
    keep = torch.rand(model.inputs.width) < 0.5
    h1, h2 = branch.encode_complementary(e, keep).split(9)
    r1, r2 = branch.encoder(e * keep.float()), branch.encoder(e * (~keep).float())
    torch.testing.assert_close(h1, r1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2, r2, rtol=1e-5, atol=1e-6)
    params = [e, *branch.encoder.parameters()]
    fast_grads = torch.autograd.grad((h1 * h2).sum(), params)
    ref_grads = torch.autograd.grad((r1 * r2).sum(), params)
    for fast, ref in zip(fast_grads, ref_grads, strict=True):  # input, both layers' weights and biases
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)


def test_group_size_contrasts_within_groups():
    batch = make_batch(12)
    e = torch.randn(12, 20)
    full = build("cl4cvr", overrides={"contrastive": {"group_size": 0}}).contrastive
    grouped = build("cl4cvr", overrides={"contrastive": {"group_size": 5}}).contrastive
    grouped.load_state_dict(full.state_dict())
    h1, h2 = torch.randn(12, 4), torch.randn(12, 4)
    conv = (batch["click"] * batch["conversion"]) > 0.5
    expected = sum(
        full.group_loss(
            torch.cat([h1[a:b], h2[a:b]])[None],
            (batch["dup_key"][a:b, None] == batch["dup_key"][None, a:b])[None],
            conv[a:b][None],
        )
        * (b - a)
        / 12
        for a, b in ((0, 5), (5, 10), (10, 12))
    )
    # Same views for both branches: patch the encoder step with fixed outputs.
    for branch in (full, grouped):
        branch.encode_complementary = lambda e, keep: torch.cat([h1, h2])
    assert grouped(e, batch).item() == pytest.approx(float(expected), rel=1e-6)
    assert full(e, batch).item() != pytest.approx(float(expected), rel=1e-3)


@pytest.mark.parametrize("name", ["hm3", "cl4cvr", "cl_supcon", "cl_triplet"])
def test_training_step_under_bf16_autocast_is_finite(name):
    model = build(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(_values(p.grad)).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "contrastive",
    [
        {"mask_scheme": "independent", "mask_rate": 0.3},
        {"fne": "cosine", "fne_threshold": 0.5},
        {"loss": "triplet", "fne": "cosine"},
        {"augmentation": "feature_mask", "spi": True},
    ],
)
def test_contrastive_switches_train(contrastive):
    model = build("cl4cvr", overrides={"contrastive": contrastive}).train()
    out = model(make_batch())
    assert torch.isfinite(out.losses["contrastive"])
    out.loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in model.contrastive.encoder.parameters())


def test_direction_reduction_sum_doubles_the_contrastive_loss():
    batch = make_batch()
    values = []
    for reduction in ("mean", "sum"):
        model = build("cl4cvr", overrides={"contrastive": {"direction_reduction": reduction}}).train()
        torch.manual_seed(5)  # same mask draw
        values.append(model(batch).losses["contrastive"].item())
    assert values[1] == pytest.approx(2 * values[0], rel=1e-6)


def _values(grad: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: embedding tables have sparse gradients by default."""
    return grad.coalesce().values() if grad.is_sparse else grad
