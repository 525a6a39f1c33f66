"""Model configuration files: inheritance, overrides, and errors that name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvr.models import build_model, load_model_config

CONF = Path(__file__).resolve().parent.parent / "conf" / "models"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_ablation_configs_differ_only_in_the_contrastive_switches():
    switches = {
        "cl_em": ("off", False, "embedding_mask"),
        "cl_em_fne": ("exact", False, "embedding_mask"),
        "cl_em_spi": ("off", True, "embedding_mask"),
        "cl4cvr": ("exact", True, "embedding_mask"),
        "cl_feature_mask": ("off", False, "feature_mask"),
        "cl_dropout": ("off", False, "dropout"),
    }
    esmm = load_model_config("esmm")
    for name, (fne, spi, augmentation) in switches.items():
        cfg = load_model_config(name)
        con = cfg["contrastive"]
        assert con["enabled"] and (con["fne"], con["spi"], con["augmentation"]) == (fne, spi, augmentation), name
        assert cfg["graph"] == esmm["graph"] and cfg["losses"] == esmm["losses"], name
    assert load_model_config("esmm")["contrastive"]["enabled"] is False


def test_naive_baselines_drop_the_ctcvr_loss_and_share_nothing():
    for name in ("naive_cvr", "lr"):
        cfg = load_model_config(name)
        assert set(cfg["losses"]) == {"ctr", "cvr"}
        assert cfg["losses"]["cvr"]["where"] == "click" and cfg["embedding"]["shared"] is False
    assert load_model_config("lr")["tower"]["hidden"] == []


def test_overrides_are_deep_merged_and_validated():
    cfg = load_model_config("cl4cvr", {"contrastive": {"temperature": 0.5}, "tower": {"hidden": [8]}})
    assert cfg["contrastive"]["temperature"] == 0.5 and cfg["contrastive"]["spi"] is True
    assert cfg["tower"]["hidden"] == [8]
    with pytest.raises(ValueError, match=r"cl4cvr.yaml \+ overrides: key 'contrastive.temperature'"):
        load_model_config("cl4cvr", {"contrastive": {"temperature": "hot"}})


def test_a_path_with_base_is_loaded(tmp_path):
    (tmp_path / "mine.yaml").write_text(f"base: {CONF / 'esmm.yaml'}\ntower: {{hidden: [4]}}\n")
    cfg = load_model_config(str(tmp_path / "mine.yaml"))
    assert cfg["name"] == "esmm" and cfg["tower"]["hidden"] == [4]


@pytest.mark.parametrize(
    "text,message",
    [
        ("base: esmm\ntowers: {hidden: [4]}\n", "unknown key 'towers'"),
        ("base: esmm\ntower: {hiden: [4]}\n", "unknown key 'tower.hiden'"),
        ("base: esmm\nembedding: {dim: '16'}\n", "key 'embedding.dim': expected int, got str '16'"),
        ("base: esmm\nembedding: {sparse: 1}\n", "key 'embedding.sparse': expected bool"),
        ("base: esmm\ntower: {hidden: [4, 0]}\n", "key 'tower.hidden': expected a list of integers >= 1"),
        ("base: esmm\ndense: {mode: cubic}\n", "key 'dense.mode': expected one of"),
        ("base: esmm\ncontrastive: {fne: fuzzy}\n", "key 'contrastive.fne'"),
        ("base: esmm\ncontrastive: {mask_rate: 0.3}\n", "mask_rate' must be 0.5 with mask_scheme complementary"),
        ("base: esmm\nlosses: {ctr: {target: clicks}}\n", "key 'losses.ctr.target': expected labels"),
        ("base: esmm\nlosses: {ctr: {output: nope}}\n", "key 'losses.ctr.output'"),
        ("base: esmm\nlosses: {ctr: {detach_heads: [q9]}}\n", "no head named 'q9'"),
        ("base: naive_cvr\ncontrastive: {enabled: true}\n", "needs embedding.shared: true"),
        (
            "base: esmm\ngraph: {outputs: {cvr: [click, nowhere]}}\n",
            "key 'graph.outputs.cvr' expected [source_node, target_node]",
        ),
        (
            "base: esmm\ngraph: {outputs: {ctcvr: null}}\nlosses: {ctcvr: null}\n",
            "key 'graph.outputs.ctcvr' is required",
        ),
        ("base: esmm\ngraph: {edges: [{src: impression, dst: click}]}\n", "exactly one of 'head' or 'complement'"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path, text, message):
    (tmp_path / "esmm.yaml").write_text((CONF / "esmm.yaml").read_text())
    (tmp_path / "naive_cvr.yaml").write_text((CONF / "naive_cvr.yaml").read_text())
    path = write(tmp_path, "bad", text)
    with pytest.raises(ValueError) as info:
        load_model_config(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_graph_errors_cycle_and_missing_path(tmp_path):
    base = load_model_config("esmm")
    cyclic = {
        **base,
        "graph": {
            **base["graph"],
            "edges": base["graph"]["edges"] + [{"src": "conversion", "dst": "click", "head": "back"}],
        },
    }
    with pytest.raises(ValueError, match="cycle"):
        build_model(cyclic, [3, 3], 0)
    unreachable = {
        **base,
        "graph": {**base["graph"], "outputs": {**base["graph"]["outputs"], "cvr": ["conversion", "click"]}},
    }
    with pytest.raises(ValueError, match="graph.outputs.cvr: no path"):
        build_model(unreachable, [3, 3], 0)


def test_missing_file_and_base_cycle(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_model_config("no_such_model")
    write(tmp_path, "a", "base: b\n")
    write(tmp_path, "b", "base: a\n")
    with pytest.raises(ValueError, match="cycle"):
        load_model_config(str(tmp_path / "a.yaml"))
