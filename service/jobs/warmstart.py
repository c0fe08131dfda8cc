"""Where a training job starts: from scratch, from the live model (`"init": "live"`), or from an earlier
run's checkpoint (`"extend": RUN`, the background trainer's next stage).

Warm start copies the live version's model.pt into the run folder (the version may be pruned while the job
runs), trains the same architecture from those weights, and fills the memory bank with the live model's
embeddings of the current collection, new images included (`bank_init: features`). Resume reloads the
run's config.yaml and checkpoint (model, bank, optimiser, RNG) and trains on to more epochs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from index import ArtifactStore
from trainer.config import TrainConfig
from trainer.data import scan_folder

PublishMode = Literal["if_better", "always"]
Init = Literal["scratch", "live"]


@dataclass(frozen=True)
class JobRequest:
    """A train job's parameters, split into how it starts and publishes, and TrainConfig overrides."""

    init: Init = "scratch"
    publish: PublishMode = "if_better"
    extend: str | None = None  # run folder name (the job id that started the run)
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, params: dict[str, Any]) -> JobRequest:
        p = dict(params)
        return cls(init=p.pop("init", "scratch"), publish=p.pop("publish", "if_better"), extend=p.pop("extend", None),
                   overrides=p)


def warm_start_config(cfg: TrainConfig, store: ArtifactStore, run: Path) -> TrainConfig:
    """Fine-tune the live model: its architecture and input size, its weights, a bank of its embeddings."""
    version = store.current_version()
    if version is None:
        raise ValueError('"init": "live" needs a live version; train one from scratch first')
    directory = store.directory(version)
    model_cfg = _model_config(directory / "model.pt")
    run.mkdir(parents=True, exist_ok=True)
    start = run / "init_model.pt"
    shutil.copyfile(directory / "model.pt", start)
    return cfg.replace(arch=model_cfg["arch"], dim=model_cfg["dim"], image_size=model_cfg["image_size"],
                       width=model_cfg.get("width", 64), stem=model_cfg.get("stem", cfg.stem),
                       init_model=str(start), bank_init="features",
                       extra={**cfg.extra, "init_from_version": version})


def _model_config(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["model_config"]


def extended_config(run: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The run's own config with more epochs or minutes (and nothing else changed): train() resumes its checkpoint
    and goes on by the time (or the epochs) left."""
    if not (run / "checkpoint.pt").is_file():
        raise ValueError(f"run {run.name} has no checkpoint to extend (a newer run replaced it)")
    cfg = TrainConfig.from_file(run / "config.yaml")
    n = len(scan_folder(cfg.data))
    bank_rows = cfg.extra.get("images")
    if bank_rows is not None and bank_rows != n:
        raise ValueError(f"the collection changed since run {run.name} started ({bank_rows} -> {n} images): "
                         "train a new version instead of resuming")
    unknown = sorted(set(overrides) - {"epochs", "minutes"})
    if unknown:
        raise ValueError(f"an extended run can only change epochs and minutes (got {', '.join(unknown)})")
    return cfg.replace(**overrides)
