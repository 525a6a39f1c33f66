"""Training-path throughput: Petastorm reader vs raw pyarrow, and ESMM / CL4CVR training on 1 and 2 ranks, beside
two independent 1-rank runs side by side (the 2-rank ceiling when the gradient exchange costs nothing).

    .venv/bin/python bench/train/run.py [--impressions-per-day 200000] [--days 3] [--quick]

All numbers come from one run on one machine, so the ratios compare like with like. Writes
bench/results/train.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cvr.config import load_config  # noqa: E402
from cvr.data import FeatureLayout, plan_shards  # noqa: E402
from cvr.data.layout import as_tensors  # noqa: E402
from cvr.data.petastorm_reader import training_batches  # noqa: E402
from cvr.data.sharding import local_path  # noqa: E402
from cvr.train.api import prepare_job, run_training  # noqa: E402


def ensure_features(cfg) -> None:
    from cvr.demo import run_pipeline
    from cvr.session import build_spark
    from cvr.storage import tables

    if tables.table_exists(cfg.storage.root, "features"):
        return
    spark = build_spark(cfg.spark, app_name="bench-train-data")
    run_pipeline(spark, cfg)
    spark.stop()


def reader_rate(job: dict, batches: int | None) -> float:
    """Rows/s of the trainer's input path (shuffled fixed-size batches as tensors) over `batches` batches
    (None: one epoch of the shard), timed after the first batch (reader start-up is not throughput)."""
    layout = FeatureLayout.from_spec(job["spec"])
    plan = plan_shards(job["train_files"], 1, job["config"]["train"]["batch_size"])
    stream = training_batches(plan, layout.columns(), 0, 1, seed=1, convert=layout.to_arrays)
    next(stream)
    start = time.perf_counter()
    rows = 0
    for _ in range(batches or plan.steps_per_epoch - 1):
        rows += as_tensors(next(stream))["sparse"].shape[0]
    stream.close()
    return rows / (time.perf_counter() - start)


def pyarrow_rate(job: dict) -> float:
    columns = FeatureLayout.from_spec(job["spec"]).columns()
    start = time.perf_counter()
    rows = sum(pq.read_table(local_path(f), columns=columns).num_rows for f in job["train_files"])
    return rows / (time.perf_counter() - start)


def reader_and_pyarrow(job: dict, rounds: int, batches: int | None) -> dict:
    """Both rates measured alternately `rounds` times (one pass takes well under a second, so a single
    pass is at the mercy of the machine's load); medians, and every sample."""
    samples = {"reader": [], "pyarrow": []}
    for _ in range(rounds):
        samples["reader"].append(reader_rate(job, batches))
        samples["pyarrow"].append(pyarrow_rate(job))
    return {
        "reader_rows_per_s": statistics.median(samples["reader"]),
        "pyarrow_rows_per_s": statistics.median(samples["pyarrow"]),
        "reader_samples_rows_per_s": samples["reader"],
        "pyarrow_samples_rows_per_s": samples["pyarrow"],
    }


def train_rate(cfg, model: str, ranks: int, threads: int, out: Path, overrides: dict | None = None) -> dict:
    train = dataclasses.replace(cfg.train, model=model, np=ranks, threads_per_rank=threads,
                                model_overrides=overrides or {})  # fmt: skip
    folder = out / f"{model}-np{ranks}-t{threads}{'-dense' if overrides else ''}"
    shutil.rmtree(folder, ignore_errors=True)
    result = run_training(dataclasses.replace(cfg, train=train), output_dir=str(folder))
    return {"samples_per_second": result.metrics["samples_per_second"], "cvr_auc": result.metrics["cvr"]["auc"]}


def side_by_side_key(model: str) -> str:
    return f"{model} 2 independent 1-rank runs side by side"


def side_by_side_rate(args, model: str) -> dict:
    """Two independent 1-rank, 1-thread trainings at once, one pinned to each of the first two cores: the
    throughput 2 ranks would reach if their gradient exchange cost nothing (what sharing the machine's caches,
    memory bandwidth and the reader's CPU costs is left in)."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    with tempfile.TemporaryDirectory(prefix="cvr-bench-solo-") as tmp:
        procs = []
        for core in cores:
            cmd = [sys.executable, __file__, "--root", args.root, "--impressions-per-day", str(args.impressions_per_day),
                   "--days", str(args.days), "--batch-size", str(args.batch_size), "--solo", model,
                   "--output", os.path.join(tmp, f"{core}.json")]  # fmt: skip
            procs.append(subprocess.Popen(cmd, preexec_fn=lambda core=core: os.sched_setaffinity(0, {core})))
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError(f"side-by-side {model} run failed")
        rates = [json.loads(Path(tmp, f"{core}.json").read_text())["samples_per_second"] for core in cores]
    return {"samples_per_second": sum(rates), "per_process": rates}


def _solo(cfg, model: str, output: str) -> int:
    """One 1-rank, 1-thread training (a child of side_by_side_rate); writes its rate to `output`."""
    result = train_rate(cfg, model, 1, 1, Path(output).parent / f"solo-{model}-{os.getpid()}")
    Path(output).write_text(json.dumps(result))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=str(REPO / "data" / "bench-train"))
    parser.add_argument("--impressions-per-day", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="ESMM only, fewer reader batches")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "train.json"))
    parser.add_argument("--solo", metavar="MODEL", help=argparse.SUPPRESS)  # one side-by-side child
    args = parser.parse_args(argv)

    cfg = load_config(root=args.root, overrides={
        "simulate": {"days": args.days, "impressions_per_day": args.impressions_per_day},
        "train": {"epochs": 1, "batch_size": args.batch_size, "checkpoint_every_steps": 0},
    })  # fmt: skip
    if args.solo:
        return _solo(cfg, args.solo, args.output)
    ensure_features(cfg)
    job = prepare_job(cfg)
    out = Path(args.root) / "bench-models"
    results = reader_and_pyarrow(job, rounds=1 if args.quick else 5, batches=60 if args.quick else None)
    runs = {}
    models = ["esmm"] if args.quick else ["esmm", "cl4cvr"]
    for model in models:
        runs[f"{model} 1 rank x 2 threads"] = train_rate(cfg, model, 1, 2, out)
        runs[f"{model} 1 rank x 1 thread"] = train_rate(cfg, model, 1, 1, out)
        runs[f"{model} 2 ranks x 1 thread"] = train_rate(cfg, model, 2, 1, out)
        if len(os.sched_getaffinity(0)) >= 2:
            runs[side_by_side_key(model)] = side_by_side_rate(args, model)
    # sparse embedding gradients are the default; this run is the dense-gradient comparison
    runs["esmm 1 rank x 2 threads, dense embedding grads"] = train_rate(
        cfg, "esmm", 1, 2, out, {"embedding": {"sparse": False}}
    )
    results["training"] = runs
    one_reader = {name: r for name, r in runs.items() if name not in map(side_by_side_key, models)}
    fastest = max(r["samples_per_second"] for r in one_reader.values())
    results["ratios"] = {
        "reader_over_pyarrow": results["reader_rows_per_s"] / results["pyarrow_rows_per_s"],
        "reader_over_fastest_training": results["reader_rows_per_s"] / fastest,
        **{
            f"{m}_2ranks_over_1rank_1thread": runs[f"{m} 2 ranks x 1 thread"]["samples_per_second"]
            / runs[f"{m} 1 rank x 1 thread"]["samples_per_second"]
            for m in models
        },
        **{
            f"{m}_side_by_side_over_1rank_1thread": runs[side_by_side_key(m)]["samples_per_second"]
            / runs[f"{m} 1 rank x 1 thread"]["samples_per_second"]
            for m in models
            if side_by_side_key(m) in runs
        },
        **{
            f"{m}_2ranks_over_1rank_2threads": runs[f"{m} 2 ranks x 1 thread"]["samples_per_second"]
            / runs[f"{m} 1 rank x 2 threads"]["samples_per_second"]
            for m in models
        },
    }
    results["setup"] = {"rows": sum(plan_shards(job["train_files"], 1, 1).rows_per_shard), "batch_size": args.batch_size,
                        "machine": platform.processor() or platform.machine(), "time": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(
        f"\n| measurement | samples/s |\n|---|---|\n| petastorm reader (-> tensors) | {results['reader_rows_per_s']:,.0f} |"
    )
    print(f"| raw pyarrow read | {results['pyarrow_rows_per_s']:,.0f} |")
    for name, run in runs.items():
        print(f"| train {name} | {run['samples_per_second']:,.0f} |")
    print("\n| ratio | value |\n|---|---|")
    for name, value in results["ratios"].items():
        print(f"| {name} | {value:.2f} |")
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
