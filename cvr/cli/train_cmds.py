"""`cvr train`, `cvr evaluate` and `cvr demo` (the whole path on embedded defaults)."""

from __future__ import annotations

import logging
from pathlib import Path

from cvr.cli.main import config_from_args

log = logging.getLogger("cvr.cli")


def _train_overrides(args) -> dict:
    train = {}
    for key in ("model", "epochs", "batch_size", "lr", "np", "seed"):
        value = getattr(args, key, None)
        if value is not None:
            train[key] = value
    if getattr(args, "train_days", None):
        train["train_days"] = args.train_days
    if getattr(args, "valid_days", None):
        train["valid_days"] = args.valid_days
    return {"train": train} if train else {}


def _train(args) -> int:
    from cvr.metrics import format_metrics_table
    from cvr.train.api import run_training

    cfg = config_from_args(args, _train_overrides(args))
    spark = None
    if args.launcher == "spark":
        from cvr.session import build_spark

        spark = build_spark(cfg.spark, app_name="cvr-train")
    result = run_training(cfg, warm_start=args.warm_start, output_dir=args.output, resume=args.resume,
                          launcher=args.launcher, spark=spark)  # fmt: skip
    print(format_metrics_table({result.metrics.get("model") or cfg.train.model: result.metrics}))
    print(f"artifact: {result.artifact_dir}")
    return 0


def _evaluate(args) -> int:
    from cvr.metrics import format_metrics_table
    from cvr.storage.tables import write_json_atomic
    from cvr.train.api import evaluate_artifact

    cfg = config_from_args(args)
    metrics = evaluate_artifact(cfg, args.artifact, args.ds or None)
    print(format_metrics_table({Path(args.artifact).name: metrics}))
    out = Path(args.output or Path(args.artifact) / "evaluation.json")
    write_json_atomic(out, {"artifact": str(args.artifact), "days": args.ds, "metrics": metrics})
    print(f"written: {out}")
    return 0


def _demo(args) -> int:
    from cvr.demo import run_demo

    cfg = config_from_args(args)
    run_demo(cfg, models=args.models, np_ranks=args.np, impressions_per_day=args.impressions_per_day, days=args.days)
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser("train", parents=[common], help="train a model on the features table (Horovod)")
    p.add_argument("--model", help="conf/models/<name>.yaml or a path (default from config: esmm)")
    p.add_argument("--np", type=int, help="number of Horovod ranks (local Gloo processes, or Spark tasks)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--train-days", nargs="+", metavar="DS")
    p.add_argument("--valid-days", nargs="+", metavar="DS")
    p.add_argument("--output", help="artifact folder (default <root>/models/<model>-<time>)")
    p.add_argument("--warm-start", metavar="ARTIFACT", help="initialise weights from an artifact")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    p.add_argument("--launcher", choices=["auto", "spark"], default="auto",
                   help="auto: one process or local horovodrun; spark: horovod.spark.run on the executors")  # fmt: skip
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("evaluate", parents=[common], help="metrics of a model artifact on some days")
    p.add_argument("artifact", help="model artifact folder")
    p.add_argument("--ds", nargs="+", metavar="DS", help="days to evaluate (default: the artifact's validation days)")
    p.add_argument("--output", help="JSON output (default <artifact>/evaluation.json)")
    p.set_defaults(handler=_evaluate)

    p = subparsers.add_parser("demo", parents=[common], help="simulate -> samples -> features -> train -> compare")
    p.add_argument("--models", nargs="+", default=["esmm", "cl4cvr"])
    p.add_argument("--np", type=int, default=2, help="Horovod ranks per training run")
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--impressions-per-day", type=int, default=150_000)
    p.set_defaults(handler=_demo)
