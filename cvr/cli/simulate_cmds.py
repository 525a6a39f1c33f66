"""`cvr simulate`: write N days of synthetic event logs with ground truth."""

from __future__ import annotations

import json

from cvr.cli.main import config_from_args

# CLI option -> simulate config key
_OVERRIDES = {
    "days": "days",
    "start_date": "start_date",
    "impressions_per_day": "impressions_per_day",
    "preset": "preset",
    "seed": "seed",
    "malformed_rate": "malformed_rate",
    "partitions": "partitions",
}


def _simulate(args) -> int:
    from cvr.pipeline.simulate_stage import run_simulate
    from cvr.session import build_spark

    simulate = {key: getattr(args, opt) for opt, key in _OVERRIDES.items() if getattr(args, opt) is not None}
    overrides = {"simulate": simulate}
    if args.format:
        overrides["storage"] = {"format": args.format}
    cfg = config_from_args(args, overrides=overrides)
    spark = build_spark(cfg.spark, app_name="cvr-simulate")
    report = run_simulate(spark, cfg)
    summary = {k: report[k] for k in ("root", "format", "days", "preset", "seed", "observed_rates", "seconds")}
    summary["rows"] = {name: table["rows"] for name, table in report["tables"].items()}
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "simulate",
        parents=[common],
        help="write N days of synthetic impression/click/behaviour/conversion logs and their truth table",
        description="Deterministic for a seed; options override the simulate section of the configuration.",
    )
    p.add_argument("--days", type=int, help="number of days to simulate")
    p.add_argument("--start-date", help="first day, YYYY-MM-DD")
    p.add_argument("--impressions-per-day", type=int, help="impressions per day")
    p.add_argument(
        "--preset", choices=["default", "sparse"], help="funnel rates: default (CVR ~2%%) or sparse (~0.5%%)"
    )
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument(
        "--malformed-rate", type=float, help="share of malformed events (nulls, unknown keys, skew, duplicates)"
    )
    p.add_argument("--partitions", type=int, help="generator tasks per day")
    p.add_argument("--format", choices=["parquet", "delta"], help="table format (default from storage.format)")
    p.set_defaults(handler=_simulate)
