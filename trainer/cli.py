"""`npid train`: every TrainConfig field is a flag; a YAML/JSON file can supply defaults; the recipe (trainer/recipe.py)
decides the rest, as it does for the service's jobs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing

from . import recipe
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


def explicit_fields(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the user gave: the --config file's, then the flags (which win)."""
    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    return {**base, **flags}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the recipe (trainer/recipe.py) for this collection and machine, explicit fields winning."""
    from .distributed import local_device

    explicit = explicit_fields(args)
    cfg = TrainConfig.from_dict(explicit)  # validates the fields before the collection is read
    if not cfg.data:
        raise ValueError("give an image folder or cifar10:<dir> to train on")
    cuda = local_device(cfg.device).type == "cuda"
    return recipe.decide(explicit, recipe.collection_of(cfg.data, cfg.limit), cuda, args.recipe)


def run(args: argparse.Namespace) -> int:
    from .train import TrainingDiverged, train

    try:
        train(config_from_args(args))
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
    p.add_argument("--recipe", choices=recipe.RECIPES, default="machine",
                   help="machine (default, as the service's jobs train): the paper's recipe on a GPU, the measured "
                        f"CPU recipe on a CPU for --minutes (default {recipe.CPU_TRAIN_MINUTES:g}); paper: the paper's "
                        "recipe anywhere (trainer/recipe.py)")
    add_config_flags(p)
    p.set_defaults(func=run)
