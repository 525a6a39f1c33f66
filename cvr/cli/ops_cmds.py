"""Operations subcommands: nightly, score, registry."""

from __future__ import annotations

import json
import sys

from cvr.cli.main import config_from_args
from cvr.ops.nightly import STAGES

EXIT_FAILED = 1
EXIT_LOCKED = 3  # another run of the same day holds the lock: not an error for a scheduler retry


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _nightly(args) -> int:
    from cvr.ops.locks import LockHeldError
    from cvr.ops.nightly import run_nightly
    from cvr.session import build_spark

    cfg = config_from_args(args)
    spark = build_spark(cfg.spark, app_name=f"cvr-nightly-{args.ds}")
    try:
        state = run_nightly(spark, cfg, args.ds, until=args.until)
    except LockHeldError as exc:
        print(f"cvr nightly: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except Exception as exc:  # the stage, its error and the log path go to on-call; the traceback is in the log
        print(f"cvr nightly: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"cvr nightly: see {cfg.storage.root}/nightly/{args.ds}/nightly.log and state.json; re-run to resume",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    _print_json({"ds": args.ds, "status": state["status"], "already_done": state["already_done"],
                 "promote": state["stages"].get("promote", {}).get("result")})  # fmt: skip
    return 0


def _score(args) -> int:
    from cvr.ops.score import run_score
    from cvr.session import build_spark

    cfg = config_from_args(args)
    spark = build_spark(cfg.spark, app_name="cvr-score")
    _print_json(run_score(spark, cfg, args.ds, model=args.model, version=args.version))
    return 0


def _registry(args) -> int:
    from cvr.ops.registry import registry_for

    registry = registry_for(config_from_args(args))
    if args.action == "list":
        production = registry.production_version()
        for version in registry.versions():
            info = registry.info(version)
            gate = info["metrics"].get("cvr", {}).get("auc")
            flag = "*" if version == production else " "
            print(f"{flag} v{version:04d}  registered {info['registered_at']}  cvr_auc={gate}  {info.get('note', '')}")
        if production is None:
            print("(no production model)")
    elif args.action == "show":
        _print_json(registry.info(args.version))
    elif args.action == "history":
        for entry in registry.history():
            print(json.dumps(entry, sort_keys=True))
    elif args.action == "promote":
        registry.promote(args.version, args.reason)
        print(f"production is now v{args.version:04d}")
    elif args.action == "rollback":
        version = registry.rollback(args.reason)
        print(f"rolled back: production is now v{version:04d}")
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser("nightly", parents=[common], help="resumable nightly retraining for one day")
    p.add_argument("--ds", required=True, help="the day whose events just landed (YYYY-MM-DD)")
    p.add_argument("--until", choices=STAGES, help="stop after this stage (e.g. hash_features to prepare data only)")
    p.set_defaults(handler=_nightly)

    p = subparsers.add_parser("score", parents=[common], help="batch-score a features table into predictions")
    p.add_argument("--ds", required=True, action="append", help="day to score (repeatable)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="artifact folder to score with (default: the registry's production model)")
    which.add_argument("--version", type=int, help="registry version to score with")
    p.set_defaults(handler=_score)

    p = subparsers.add_parser("registry", parents=[common], help="inspect and switch registered models")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="versions, * marks production")
    actions.add_parser("history", help="promotions and rollbacks, one JSON line each")
    show = actions.add_parser("show", help="one version's record and metrics")
    show.add_argument("version", type=int)
    promote = actions.add_parser("promote", help="make a version production")
    promote.add_argument("version", type=int)
    promote.add_argument("--reason", required=True, help="recorded in the promotion history")
    rollback = actions.add_parser("rollback", help="restore the previous production version")
    rollback.add_argument("--reason", default="manual rollback")
    p.set_defaults(handler=_registry)
