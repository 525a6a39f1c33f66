"""`cvr score`: batch predictions of a features table on the Spark executors with a TorchScript scoring module.

The scoring.pt bytes travel to executors in a broadcast; each Python worker loads the module once and keeps it
in a cache keyed by (artifact path, content hash), so later tasks in the same worker reuse it. Rows reach the
model as Arrow batches (mapInArrow) and become tensors through the same FeatureLayout the trainer uses.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from cvr.config import Config

OUTPUT_COLUMNS = ("impression_id", "p_ctr", "p_cvr", "p_ctcvr", "model_version", "ds")

_MODEL_CACHE: dict[tuple[str, str], Any] = {}  # per Python worker process


class ScoreError(ValueError):
    """Scoring cannot run; the message names the model, table or column at fault."""


def model_version_of(artifact_dir: str | Path) -> str:
    """'v0007' for a registry version folder, else the artifact folder's name."""
    from cvr.ops.registry import VERSION_FILE, version_name

    marker = Path(artifact_dir) / VERSION_FILE
    if marker.is_file():
        return version_name(int(json.loads(marker.read_text())["version"]))
    return Path(artifact_dir).resolve().name


def resolve_model(cfg: Config, model: str | None = None, version: int | None = None) -> Path:
    """The artifact to score with: an explicit folder, a registry version, or the production model."""
    from cvr.ops.registry import registry_for

    if model and version is not None:
        raise ScoreError("give either --model PATH or --version N, not both")
    if model:
        folder = Path(model)
        if not (folder / "scoring.pt").is_file():
            raise ScoreError(f"--model {model}: no scoring.pt in that folder (not a model artifact)")
        return folder
    registry = registry_for(cfg)
    if version is not None:
        return registry.path(version)
    production = registry.production()
    if production is None:
        raise ScoreError(f"registry {registry.root}: no production model; pass --model PATH or --version N")
    return production


def load_scoring_module(path: str, payload: bytes):
    """Load a TorchScript module once per process; later calls with the same path and bytes reuse it."""
    import torch

    key = (path, hashlib.sha256(payload).hexdigest())
    module = _MODEL_CACHE.get(key)
    if module is None:
        module = torch.jit.load(io.BytesIO(payload), map_location="cpu")
        module.eval()
        _MODEL_CACHE[key] = module
    return module


def score_arrays(module, layout, arrays: dict) -> Any:
    """Column arrays of one batch -> numpy [n, 3] float32 of (p_ctr, p_cvr, p_ctcvr)."""
    import torch

    batch = layout.to_tensors(arrays)
    with torch.inference_mode():
        return module(batch["sparse"], batch["dense"]).numpy()


def _make_batch_scorer(model_path: str, payload_broadcast, spec: dict, model_version: str, batch_rows: int,
                       threads: int):  # fmt: skip
    def score_batches(batches):
        import numpy as np
        import pyarrow as pa
        import torch

        from cvr.data.layout import FeatureLayout

        torch.set_num_threads(threads)
        layout = FeatureLayout.from_spec(spec)
        module = load_scoring_module(model_path, payload_broadcast.value)
        for big in batches:
            for start in range(0, big.num_rows, batch_rows):
                batch = big.slice(start, batch_rows)
                arrays = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.schema.names}
                probs = score_arrays(module, layout, arrays).astype(np.float64)
                yield pa.RecordBatch.from_arrays(
                    [batch.column("impression_id"), pa.array(probs[:, 0]), pa.array(probs[:, 1]),
                     pa.array(probs[:, 2]), pa.array([model_version] * batch.num_rows, pa.string()),
                     batch.column("ds")],
                    names=list(OUTPUT_COLUMNS),
                )  # fmt: skip

    return score_batches


def predict(spark, cfg: Config, features_df, artifact_dir: str | Path, model_version: str | None = None):
    """DataFrame of predictions (schemas/predictions.yaml) for the rows of a features DataFrame."""
    from cvr.data.layout import FeatureLayout

    artifact_dir = Path(artifact_dir)
    spec_path, model_path = artifact_dir / "hashing_spec.json", artifact_dir / "scoring.pt"
    for required in (spec_path, model_path):
        if not required.is_file():
            raise ScoreError(f"{artifact_dir}: missing {required.name}; not a model artifact")
    spec = json.loads(spec_path.read_text())
    layout = FeatureLayout.from_spec(spec)
    needed = ["impression_id", *layout.sparse_columns, *layout.dense_columns, "ds"]
    missing = [c for c in needed if c not in features_df.columns]
    if missing:
        raise ScoreError(
            f"features table '{cfg.features.table}': column(s) {', '.join(missing)} required by the model's "
            f"hashing spec ({spec_path}) are missing; was the table hashed with a different spec?"
        )
    payload = spark.sparkContext.broadcast(model_path.read_bytes())
    scorer = _make_batch_scorer(str(model_path.resolve()), payload, spec, model_version or model_version_of(artifact_dir),
                                cfg.score.arrow_batch_rows, cfg.score.torch_threads)  # fmt: skip
    schema = "impression_id string, p_ctr double, p_cvr double, p_ctcvr double, model_version string, ds string"
    return features_df.select(*needed).mapInArrow(scorer, schema)


def check_same_spec(table_spec: Path, artifact_dir: Path) -> None:
    """Ids hashed with another spec would index the wrong embeddings silently; refuse instead."""
    from cvr.train.artifact import same_hashing_spec

    if table_spec.is_file() and not same_hashing_spec(artifact_dir, json.loads(table_spec.read_text())):
        raise ScoreError(
            f"hashing spec of the features table ({table_spec}) differs from the model's "
            f"({artifact_dir / 'hashing_spec.json'}); re-hash the day with the model's spec or score with a model "
            "trained on this table"
        )


def run_score(spark, cfg: Config, ds: str | list[str], model: str | None = None, version: int | None = None) -> dict:
    """Score the features table's ds partition(s) and replace them in the predictions table; returns a report."""
    from cvr.pipeline.hashing import table_spec_path
    from cvr.storage.schema import enforce
    from cvr.storage.tables import list_partitions, read_table, write_partitions

    days = [ds] if isinstance(ds, str) else list(ds)
    root, table = cfg.storage.root, cfg.features.table
    available = set(list_partitions(root, table))
    absent = [d for d in days if d not in available]
    if absent:
        raise ScoreError(f"features table '{table}' under {root}: no partition ds={', '.join(absent)}")
    artifact_dir = resolve_model(cfg, model, version)
    check_same_spec(table_spec_path(root, table), Path(artifact_dir))
    model_version = model_version_of(artifact_dir)
    predictions = predict(spark, cfg, read_table(spark, root, table, ds=days), artifact_dir, model_version)
    written = write_partitions(enforce(predictions, "predictions"), root, cfg.score.table, fmt=cfg.storage.format,
                               row_group_rows=cfg.storage.row_group_rows,
                               max_rows_per_file=cfg.storage.max_rows_per_file)  # fmt: skip
    return {"model": str(artifact_dir), "model_version": model_version, "days": days, "output": written}
