"""Model configuration: conf/models/<name>.yaml merged over DEFAULTS, then validated.

A model file may name another with `base: <name>`; the base is loaded first and the file is
deep-merged over it (lists replace, mappings merge, `key: null` removes). Every error names the file and the dotted key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from cvr.config import read_yaml

MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "conf" / "models"
LABELS = ("click", "micro", "macro", "conversion")

DEFAULTS: dict[str, Any] = {
    "name": "",
    "description": "",
    "embedding": {
        "dim": 16,
        "sparse": True,  # sparse gradients: 2.4x faster than dense on the default spec (bench/results/train.json)
        "init_std": 0.01,
        "shared": True,  # False: every head owns its embeddings (the naive baselines)
    },
    "dense": {"mode": "linear", "dim": 8},  # linear | tanh | none
    "tower": {"hidden": [128, 64], "activation": "relu", "dropout": 0.0},
    "feature_dropout": 0.0,  # FD: drop whole fields of the supervised input while training
    "prob_eps": 1e-7,  # probabilities are clamped to [eps, 1 - eps] before any log
    "graph": {"nodes": [], "edges": [], "outputs": {}},
    "losses": {},
    "contrastive": {
        "enabled": False,
        "loss": "infonce",  # infonce | triplet | supcon
        "augmentation": "embedding_mask",  # embedding_mask | feature_mask | dropout
        "mask_scheme": "complementary",  # complementary (one per-batch mask, as the authors' code) | independent
        "mask_rate": 0.5,  # P(drop) per element; complementary masks need 0.5
        "dropout_rate": 0.2,  # for augmentation: dropout
        "encoder": [128, 64],  # as the towers (paper: encoder sizes = tower sizes); code 256-128-64
        "group_size": 0,  # contrast views within groups of this many samples; 0 = whole batch
        "temperature": 12.0,  # the authors' code; the paper: larger works better
        "alpha": 0.02,  # paper convention (mean over 2N anchors); = code's 0.01 with summed directions
        "direction_reduction": "mean",  # mean (paper) | sum (code: L_ab + L_ba = 2 * mean)
        "fne": "off",  # off | exact (dup_key) | cosine (unmasked embeddings, threshold)
        "fne_threshold": 0.9,
        "spi": False,
        "triplet_margin": 0.5,
    },
}

EDGE_KEYS = {"src": str, "dst": str, "head": str, "complement": str}
LOSS_DEFAULTS = {"output": "", "target": "", "weight": 1.0, "where": "", "detach_heads": []}
CHOICES = {
    "dense.mode": ("linear", "tanh", "none"),
    "tower.activation": ("relu", "prelu", "tanh"),
    "contrastive.loss": ("infonce", "triplet", "supcon"),
    "contrastive.augmentation": ("embedding_mask", "feature_mask", "dropout"),
    "contrastive.mask_scheme": ("complementary", "independent"),
    "contrastive.direction_reduction": ("mean", "sum"),
    "contrastive.fne": ("off", "exact", "cosine"),
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if value is None:  # `key: null` removes an inherited entry
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    return MODELS_DIR / f"{name_or_path}.yaml"


def _read(path: Path, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: model configuration file not found")
    if str(path) in chain:
        raise ValueError(f"{path}: key 'base' forms a cycle: {' -> '.join(chain + (str(path),))}")
    data = read_yaml(path)  # ConfigError (a ValueError) naming the file for bad YAML or a non-mapping
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{path}: key 'base' expected a model name or path, got {base!r}")
    base_path = _resolve_path(base) if "/" in base else path.parent / f"{base}.yaml"
    return _merge(_read(base_path, chain + (str(path),)), data)


def load_model_config(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read conf/models/<name>.yaml (or a path), follow `base:`, merge `overrides`, validate."""
    path = _resolve_path(name_or_path)
    data = _read(path)
    data.setdefault("name", path.stem)
    validate_model_config(data, str(path))
    if overrides:
        data = _merge(data, overrides)
        validate_model_config(data, f"{path} + overrides")
    return resolve(data)


def resolve(data: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults (including per-loss defaults) into a validated partial config."""
    cfg = _merge(DEFAULTS, data)
    cfg["losses"] = {name: _merge(LOSS_DEFAULTS, spec) for name, spec in cfg["losses"].items()}
    if cfg["contrastive"]["fne"] is False:  # YAML 1.1 reads a bare `off` as False
        cfg["contrastive"]["fne"] = "off"
    return cfg


def _check_type(value: Any, default: Any, where: str) -> None:
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"{where}: expected {type(default).__name__}, got {type(value).__name__} {value!r}")


def _check_section(data: dict[str, Any], defaults: dict[str, Any], source: str, prefix: str) -> None:
    for key, value in data.items():
        where = f"{source}: key '{prefix}{key}'"
        if key not in defaults:
            raise ValueError(f"{source}: unknown key '{prefix}{key}' (expected one of: {', '.join(sorted(defaults))})")
        if prefix + key in ("graph", "losses"):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
            continue
        if prefix + key == "contrastive.fne" and value is False:
            continue
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
            _check_section(value, default, source, f"{prefix}{key}.")
            continue
        _check_type(value, default, where)
        choices = CHOICES.get(prefix + key)
        if choices and value not in choices:
            raise ValueError(f"{where}: expected one of {choices}, got {value!r}")


def _check_int_list(value: Any, where: str, minimum: int = 1) -> None:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        raise ValueError(f"{where}: expected a list of integers >= {minimum}, got {value!r}")


def _check_graph(graph: dict[str, Any], source: str) -> None:
    unknown = set(graph) - {"nodes", "edges", "outputs"}
    if unknown:
        raise ValueError(f"{source}: unknown key 'graph.{sorted(unknown)[0]}' (expected nodes, edges, outputs)")
    nodes = graph.get("nodes", [])
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ValueError(f"{source}: key 'graph.nodes' expected a non-empty list of names, got {nodes!r}")
    edges = graph.get("edges", [])
    if not isinstance(edges, list) or not edges:
        raise ValueError(f"{source}: key 'graph.edges' expected a non-empty list, got {edges!r}")
    for i, edge in enumerate(edges):
        where = f"{source}: key 'graph.edges[{i}]'"
        if not isinstance(edge, dict):
            raise ValueError(f"{where}: expected a mapping, got {edge!r}")
        for key, value in edge.items():
            if key not in EDGE_KEYS:
                raise ValueError(f"{where}: unknown key '{key}' (expected one of: {', '.join(EDGE_KEYS)})")
            if not isinstance(value, str):
                raise ValueError(f"{where}.{key}: expected str, got {type(value).__name__} {value!r}")
        for end in ("src", "dst"):
            if edge.get(end) not in nodes:
                raise ValueError(f"{where}.{end}: expected a node of graph.nodes, got {edge.get(end)!r}")
        if ("head" in edge) == ("complement" in edge):
            raise ValueError(f"{where}: expected exactly one of 'head' or 'complement', got {edge!r}")
    heads = {e["head"] for e in edges if "head" in e}
    for i, edge in enumerate(edges):
        if "complement" in edge and edge["complement"] not in heads:
            raise ValueError(f"{source}: key 'graph.edges[{i}].complement': no head named {edge['complement']!r}")
    outputs = graph.get("outputs", {})
    if not isinstance(outputs, dict):
        raise ValueError(f"{source}: key 'graph.outputs' expected a mapping, got {outputs!r}")
    for required in ("ctr", "cvr", "ctcvr"):
        if required not in outputs:
            raise ValueError(f"{source}: key 'graph.outputs.{required}' is required")
    for name, pair in outputs.items():
        ok = isinstance(pair, list) and len(pair) == 2 and all(p in nodes for p in pair)
        if not ok:
            raise ValueError(f"{source}: key 'graph.outputs.{name}' expected [source_node, target_node], got {pair!r}")


def _check_losses(losses: dict[str, Any], outputs: dict[str, Any], heads: set[str], source: str) -> None:
    if not losses:
        raise ValueError(f"{source}: key 'losses' expected at least one loss")
    for name, spec in losses.items():
        where = f"{source}: key 'losses.{name}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}': expected a mapping, got {spec!r}")
        _check_section(spec, LOSS_DEFAULTS, source, f"losses.{name}.")
        if spec.get("output") not in outputs:
            raise ValueError(
                f"{where}.output': expected one of graph.outputs {sorted(outputs)}, got {spec.get('output')!r}"
            )
        target = spec.get("target", "")
        labels = [t.strip() for t in target.split("*")] if target else []
        if not labels or any(t not in LABELS for t in labels):
            raise ValueError(f"{where}.target': expected labels from {LABELS} joined by '*', got {target!r}")
        if spec.get("where", "") not in ("", *LABELS):
            raise ValueError(f"{where}.where': expected '' or one of {LABELS}, got {spec.get('where')!r}")
        for head in spec.get("detach_heads", []):
            if head not in heads:
                raise ValueError(f"{where}.detach_heads': no head named {head!r}")


def validate_model_config(data: dict[str, Any], source: str) -> None:
    """Raise ValueError naming `source` and the dotted key for any unknown key or bad value."""
    _check_section(data, DEFAULTS, source, "")
    cfg = resolve(data)
    _check_int_list(cfg["tower"]["hidden"], f"{source}: key 'tower.hidden'")
    _check_int_list(cfg["contrastive"]["encoder"], f"{source}: key 'contrastive.encoder'")
    if not cfg["contrastive"]["encoder"]:
        raise ValueError(f"{source}: key 'contrastive.encoder' expected at least one layer")
    numeric = [
        ("contrastive.group_size", cfg["contrastive"]["group_size"], cfg["contrastive"]["group_size"] >= 0),
        ("embedding.dim", cfg["embedding"]["dim"], cfg["embedding"]["dim"] >= 1),
        ("dense.dim", cfg["dense"]["dim"], cfg["dense"]["dim"] >= 1),
        ("tower.dropout", cfg["tower"]["dropout"], 0 <= cfg["tower"]["dropout"] < 1),
        ("feature_dropout", cfg["feature_dropout"], 0 <= cfg["feature_dropout"] < 1),
        ("prob_eps", cfg["prob_eps"], 0 < cfg["prob_eps"] < 0.01),
        ("contrastive.mask_rate", cfg["contrastive"]["mask_rate"], 0 < cfg["contrastive"]["mask_rate"] < 1),
        ("contrastive.dropout_rate", cfg["contrastive"]["dropout_rate"], 0 < cfg["contrastive"]["dropout_rate"] < 1),
        ("contrastive.temperature", cfg["contrastive"]["temperature"], cfg["contrastive"]["temperature"] > 0),
        ("contrastive.alpha", cfg["contrastive"]["alpha"], cfg["contrastive"]["alpha"] >= 0),
    ]
    for key, value, ok in numeric:
        if not ok:
            raise ValueError(f"{source}: key '{key}' out of range, got {value!r}")
    contrastive = cfg["contrastive"]
    if contrastive["fne"] not in CHOICES["contrastive.fne"]:
        raise ValueError(
            f"{source}: key 'contrastive.fne' expected one of {CHOICES['contrastive.fne']}, got {contrastive['fne']!r}"
        )
    if contrastive["mask_scheme"] == "complementary" and contrastive["mask_rate"] != 0.5:
        raise ValueError(
            f"{source}: key 'contrastive.mask_rate' must be 0.5 with mask_scheme complementary, got {contrastive['mask_rate']!r}"
        )
    if contrastive["enabled"] and not cfg["embedding"]["shared"]:
        raise ValueError(
            f"{source}: key 'contrastive.enabled' needs embedding.shared: true (the branch works on the shared embedding)"
        )
    _check_graph(cfg["graph"], source)
    heads = {e["head"] for e in cfg["graph"]["edges"] if "head" in e}
    _check_losses(data.get("losses", {}), cfg["graph"]["outputs"], heads, source)
