"""The `cvr` command. Each area registers its subcommands from its own module (see COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cvr.config import ConfigError, load_config

# Modules exposing register(subparsers, common_parser). Missing ones are skipped so areas land independently.
COMMAND_MODULES = (
    "cvr.cli.simulate_cmds",
    "cvr.cli.pipeline_cmds",
    "cvr.cli.train_cmds",
    "cvr.cli.ops_cmds",
    "cvr.cli.experiment_cmds",
    "cvr.cli.misc_cmds",
)


def common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration")
    group.add_argument("--config", help="YAML configuration file (see conf/)")
    group.add_argument("--profile", choices=["local", "standalone", "cluster"], help="settings profile (default local)")
    group.add_argument("--root", help="table root folder or URI (default ./data)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvr", description="CVR feature pipeline and distributed training")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers, common)
    return parser


def config_from_args(args: argparse.Namespace, overrides: dict | None = None):
    return load_config(args.config, profile=args.profile, root=args.root, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"cvr: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
