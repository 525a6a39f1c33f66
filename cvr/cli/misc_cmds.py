"""Small utility subcommands."""

from __future__ import annotations

import json

from cvr.cli.main import config_from_args


def _show_config(args) -> int:
    cfg = config_from_args(args)
    print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser("show-config", parents=[common], help="print the resolved configuration")
    p.set_defaults(handler=_show_config)
