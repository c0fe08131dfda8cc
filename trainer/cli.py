"""`npid train`: every TrainConfig field is a flag; a YAML/JSON file can supply defaults."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing

from .config import TrainConfig

log = logging.getLogger(__name__)


def _flag_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp) and len(args) == 1:  # Optional[X]: the flag takes an X
        tp = args[0]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return {"nargs": "+", "type": int}
    if origin is typing.Literal:
        return {"choices": typing.get_args(tp)}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": tp}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("data", "extra"):
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, default=None,
                            **_flag_type(hints[field.name]))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    return TrainConfig.from_dict({**base, **overrides})


def run(args: argparse.Namespace) -> int:
    from .train import TrainingDiverged, train

    try:
        cfg = config_from_args(args)
        if not cfg.data:
            raise ValueError("give an image folder or cifar10:<dir> to train on")
        train(cfg)
    except (ValueError, FileNotFoundError, TrainingDiverged, RuntimeError) as e:
        log.debug("training failed", exc_info=True)
        print(f"npid train: error: {e}", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="learn embeddings on an image folder (NPID), evaluate, export",
                       description="Train NPID on an image folder or cifar10:<dir>; writes <out>/export/.")
    p.add_argument("data", nargs="?", default=None, help="image folder, or cifar10:<dir> for the .npz arrays")
    p.add_argument("--config", help="YAML or JSON file of TrainConfig fields (flags override it)")
    add_config_flags(p)
    p.set_defaults(func=run)
