"""Pipeline subcommands: build-samples, hash-features, ingest-aliccp (each prints its JSON report)."""

from __future__ import annotations

import json
import sys

from cvr.cli.main import config_from_args


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _run_per_day(args, app: str, stage_fn_name: str) -> int:
    from cvr.pipeline import stages
    from cvr.pipeline.hashing import HashingSpecError
    from cvr.pipeline.samples import SamplesInputError
    from cvr.session import build_spark
    from cvr.storage import SchemaError

    cfg = config_from_args(args)
    spark = build_spark(cfg.spark, app_name=app)
    stage_fn = getattr(stages, stage_fn_name)
    reports = []
    for ds in args.ds:
        try:
            reports.append(stage_fn(spark, cfg, ds))
        except (stages.StageInputError, HashingSpecError, SamplesInputError, SchemaError) as exc:
            print(f"cvr {app}: ds={ds}: {exc}", file=sys.stderr)
            return 2
    _print_json(reports if len(reports) > 1 else reports[0])
    return 0


def _build_samples(args) -> int:
    return _run_per_day(args, "build-samples", "run_build_samples")


def _hash_features(args) -> int:
    return _run_per_day(args, "hash-features", "run_hash_features")


def _ingest_aliccp(args) -> int:
    from cvr.pipeline import stages
    from cvr.session import build_spark

    cfg = config_from_args(args)
    spark = build_spark(cfg.spark, app_name="ingest-aliccp")
    try:
        report = stages.run_ingest_aliccp(spark, cfg, args.skeleton, args.common, args.ds)
    except stages.StageInputError as exc:
        print(f"cvr ingest-aliccp: {exc}", file=sys.stderr)
        return 2
    _print_json(report)
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "build-samples", parents=[common], help="join event logs into labelled samples (one row per impression)"
    )
    p.add_argument("--ds", action="append", required=True, help="day YYYY-MM-DD to build (repeat for several)")
    p.set_defaults(handler=_build_samples)

    p = subparsers.add_parser(
        "hash-features", parents=[common], help="hash a samples partition into the features table"
    )
    p.add_argument("--ds", action="append", required=True, help="day YYYY-MM-DD to hash (repeat for several)")
    p.set_defaults(handler=_hash_features)

    p = subparsers.add_parser("ingest-aliccp", parents=[common], help="load raw Ali-CCP files into a samples table")
    p.add_argument("--skeleton", required=True, help="sample_skeleton_*.csv in the raw Ali-CCP layout")
    p.add_argument("--common", required=True, help="common_features_*.csv matching the skeleton file")
    p.add_argument("--ds", required=True, help="partition (day) to write the samples under, YYYY-MM-DD")
    p.set_defaults(handler=_ingest_aliccp)
