"""`npid` console entry point: one subcommand per job, each registered by the package that owns it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .settings import SettingsError

# package modules that expose register(subparsers); each adds its subcommand(s) with set_defaults(func=...)
COMMAND_MODULES = ("trainer.cli", "index.cli", "service.api.serve", "service.jobs.cli", "service.watch.cli",
                   "service.launch.up")


def _embed_image_file(version_dir, image):
    from .live.collection import embed_image_file  # torch is imported only when a query image is embedded

    return embed_image_file(version_dir, image)


def _estimate_duplicate_threshold(version, graph):
    from .live.duplicates import estimate_for_version  # torch is imported only when a model measures it

    return estimate_for_version(version, graph)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npid", description="npid-search: learn, index and search images")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        if name == "index.cli":  # the index knows no models: a query image is embedded by the trainer's code
            module.register(sub, embed_image=_embed_image_file, estimate=_estimate_duplicate_threshold)
        else:
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SettingsError as e:  # any process's NPID_* settings that cannot start it: the message says which
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
