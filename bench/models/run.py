"""Model speed benchmark: forward+backward time per 1,000 samples at batch 1,024 on CPU.

Every model in conf/models runs in its own subprocess (so the peak-RSS delta is its own) on the
same random batch (fixed seed): warmup steps, then repeats; the median step is reported. The first
model pair timed in a fresh process is slower for a few dozen steps (CL4CVR / ESMM after 3 warm-up
steps: 2.16, then 1.90-1.93 for the next pairs of the same process; after 10: 1.99-2.04; after 30:
1.97-1.98), so 30 warm-up steps are spent before timing the steady state.
Peak memory = resource.getrusage(RUSAGE_SELF).ru_maxrss after the timed steps minus before the
first step (process peak RSS growth caused by training steps; the model and batch are built before).
Writes bench/results/models.json and prints a table.

    .venv/bin/python bench/models/run.py [--models esmm cl4cvr] [--threads 1] [--repeats 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
RESULTS = REPO / "bench" / "results" / "models.json"


def make_batch(batch: int, fields: int, buckets: int, num_dense: int, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    click = (torch.rand(batch, generator=g) < 0.3).float()
    return {
        "sparse": torch.randint(0, buckets, (batch, fields), generator=g),
        "dense": torch.randn(batch, num_dense, generator=g),
        "click": click,
        "micro": click * (torch.rand(batch, generator=g) < 0.4).float(),
        "macro": click * (torch.rand(batch, generator=g) < 0.2).float(),
        "conversion": click * (torch.rand(batch, generator=g) < 0.05).float(),
        "dup_key": torch.randint(0, batch * 4, (batch,), generator=g),  # a few exact duplicates
        "user_key": torch.randint(0, batch // 4, (batch,), generator=g),
    }


def bench_one(args: argparse.Namespace) -> dict:
    import torch

    from cvr.models import build_model, load_model_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_model_config(args.one)
    model = build_model(cfg, [args.buckets] * args.fields, args.dense).train()
    batch = make_batch(args.batch, args.fields, args.buckets, args.dense, args.seed)
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = [], []
    for step in range(args.warmup + args.repeats):
        w, c = step_time(model, batch)
        if step >= args.warmup:
            wall.append(w)
            cpu.append(c)
    rss_after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model": args.one,
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_ms_median": round(statistics.median(wall) * 1e3, 3),
        "step_cpu_ms_median": round(statistics.median(cpu) * 1e3, 3),
        "ms_per_1000_samples": round(statistics.median(wall) * 1e6 / args.batch, 3),
        "cpu_ms_per_1000_samples": round(statistics.median(cpu) * 1e6 / args.batch, 3),
        "peak_rss_delta_mib": round((rss_after_kib - rss_before_kib) / 1024, 2),
    }


def step_time(model, batch) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of zero_grad + forward + backward."""
    model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    model(batch).loss.backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_ratio(args: argparse.Namespace, variant: str, overrides: dict | None) -> dict:
    """ESMM and a CL variant stepped alternately in one process, so machine load hits both alike."""
    import torch

    from cvr.models import build_model, load_model_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    buckets = [args.buckets] * args.fields
    models = {
        "esmm": build_model(load_model_config("esmm"), buckets, args.dense).train(),
        variant: build_model(load_model_config("cl4cvr", overrides), buckets, args.dense).train(),
    }
    batch = make_batch(args.batch, args.fields, args.buckets, args.dense, args.seed)
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.warmup + args.repeats):
        for name, model in models.items():
            _, c = step_time(model, batch)
            if step >= args.warmup:
                cpu[name].append(c)
    medians = {name: statistics.median(v) * 1e3 for name, v in cpu.items()}
    return {
        "variant": variant,
        "overrides": overrides or {},
        "esmm_cpu_ms": round(medians["esmm"], 3),
        "cl_cpu_ms": round(medians[variant], 3),
        "ratio": round(medians[variant] / medians["esmm"], 3),
    }


def run_all(args: argparse.Namespace) -> dict:
    names = args.models or sorted(p.stem for p in (REPO / "conf" / "models").glob("*.yaml"))
    passthrough = [
        f"--{k}={getattr(args, k)}"
        for k in ("threads", "batch", "fields", "buckets", "dense", "warmup", "repeats", "seed")
    ]
    rows = []
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", name, *passthrough], capture_output=True, text=True, cwd=REPO
        )
        if proc.returncode != 0:
            raise SystemExit(f"benchmark of {name} failed:\n{proc.stderr}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ratios = [
        interleaved_ratio(args, "cl4cvr", None),  # the default: contrast groups of 64 (the paper's batch)
        interleaved_ratio(args, "cl4cvr_whole_batch", {"contrastive": {"group_size": 0}}),
        interleaved_ratio(args, "cl4cvr_group256", {"contrastive": {"group_size": 256}}),
        interleaved_ratio(args, "cl4cvr_code_encoder", {"contrastive": {"encoder": [256, 128, 64]}}),
    ]
    import torch

    return {
        "what": "zero_grad + forward + backward (no optimizer step) per training step, CPU, median of repeats; "
        "wall clock and process CPU time (CPU time is less sensitive to other jobs on a shared machine)",
        "memory": "peak_rss_delta_mib = ru_maxrss growth during the steps (fresh process per model)",
        "setup": {
            k: getattr(args, k) for k in ("batch", "fields", "buckets", "dense", "threads", "warmup", "repeats", "seed")
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other jobs share these cores
        },
        "cl4cvr_over_esmm_step_time": ratios[0]["ratio"],
        "cl4cvr_whole_batch_over_esmm_step_time": ratios[1]["ratio"],
        "cl4cvr_over_esmm_target": 2.0,
        "cl_over_esmm_interleaved": ratios,
        "models": rows,
    }


def print_table(result: dict) -> None:
    print(f"{'model':<16}{'params':>10}{'wall ms/1k':>12}{'cpu ms/1k':>11}{'peak RSS delta MiB':>20}")
    for r in result["models"]:
        print(
            f"{r['model']:<16}{r['parameters']:>10}{r['ms_per_1000_samples']:>12.2f}"
            f"{r['cpu_ms_per_1000_samples']:>11.2f}{r['peak_rss_delta_mib']:>20.1f}"
        )
    for r in result["cl_over_esmm_interleaved"]:
        print(
            f"{r['variant']:<22} / esmm step CPU time: {r['ratio']:.2f}  ({r['cl_cpu_ms']:.1f} / {r['esmm_cpu_ms']:.1f} ms)"
        )
    print(f"CL4CVR / ESMM step time (default config): {result['cl4cvr_over_esmm_step_time']} (target <= 2.0)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names (default: every conf/models/*.yaml)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--fields", type=int, default=16)
    parser.add_argument("--buckets", type=int, default=10000)
    parser.add_argument("--dense", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(bench_one(args)))
        return
    result = run_all(args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
