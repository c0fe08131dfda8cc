"""`npid worker`: the Celery worker that runs the training and index jobs (settings: NPID_* variables, .env)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    w = sub.add_parser("worker", help="run the Celery worker that trains and indexes (settings: NPID_*)")
    w.add_argument("--loglevel", default="INFO")
    w.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from .worker import main  # reads the settings on import (a SettingsError: service/cli.py says it)

    main(args.loglevel)
    return 0
