"""`cvr experiment` (run a sweep from conf/experiments/*.yaml) and `cvr bench` (all benchmarks + README table)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from cvr.config import CONF_DIR

REPO_DIR = CONF_DIR.parent


def _experiment(args) -> int:
    from cvr.experiments.runner import run_experiment
    from cvr.experiments.spec import load_experiment

    spec = load_experiment(args.experiment)
    run = run_experiment(
        spec,
        config_path=args.config,
        profile=args.profile,
        root=args.root,
        max_trials=args.max_trials,
        dry_run=args.dry_run,
    )
    counts = {status: run.count(status) for status in ("done", "skipped", "failed", "pending")}
    print(f"experiment {spec.name}: {len(run.outcomes)} trials in {run.directory}")
    if args.dry_run:
        for outcome in run.outcomes:
            trial = outcome.trial
            print(
                f"  {trial.trial_id}  {outcome.status:8s} {trial.data_label:9s} {trial.model:16s} seed={trial.seed} {trial.variant}"
            )
    print("  " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    for outcome in run.failed:
        print(
            f"  FAILED {outcome.trial.trial_id} ({outcome.trial.model}): {outcome.error}; see {outcome.path / 'error.txt'}"
        )
    if run.report:
        print(f"report: {run.report}")
    return 1 if run.failed else 0


def _bench(args) -> int:
    command = [sys.executable, str(REPO_DIR / "bench" / "run_all.py")]
    if args.quick:
        command.append("--quick")
    return subprocess.call(command, cwd=REPO_DIR)


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "experiment",
        parents=[common],
        help="run a sweep: models x settings x seeds, resumable, with a markdown report",
        description="Run conf/experiments/<name>.yaml. Finished trials are skipped, so re-running resumes. "
        "--config replaces the experiment's base_config; --root is where data, trials and reports go.",
    )
    p.add_argument("experiment", type=Path, help="experiment YAML, e.g. conf/experiments/cl4cvr_ablation.yaml")
    p.add_argument("--max-trials", type=_positive_int, help="run at most N pending trials, then report")
    p.add_argument("--dry-run", action="store_true", help="validate and list the trials without running any")
    p.set_defaults(handler=_experiment)
    b = subparsers.add_parser(
        "bench",
        parents=[common],
        help="run bench/pipeline, bench/models and bench/train; write bench/results/*.json; refresh the README table",
    )
    b.add_argument("--quick", action="store_true", help="small sizes (passed on to benchmarks that accept --quick)")
    b.set_defaults(handler=_bench)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value
