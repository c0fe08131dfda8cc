"""One typed config for a training run: the single source of truth.

Defaults are the paper's CIFAR-10 recipe as the authors' `lemniscate.pytorch/cifar.py` runs it (Wu et al.
2018): ResNet-18, d=128, m=4096 noise samples, tau=0.1 on CIFAR-size images (cifar.py's `--nce-t`; the
paper says 0.07, which its ImageNet main.py uses and so do images > 64 px here), bank momentum 0.5, SGD
lr 0.03 momentum 0.9 weight decay 5e-4, 200 epochs, x0.1 at epochs 120 and 160, no flip. Where a default
differs from the paper it says so in the comment.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from .preprocess import is_small

Objective = Literal["softmax", "nce", "infonce", "parametric"]
SAMPLED_OBJECTIVES: tuple[Objective, ...] = ("nce", "infonce")  # those that draw m noise samples per positive
Schedule = Literal["step", "cosine"]
DataPath = Literal["auto", "device", "loader"]
BankInit = Literal["random", "features"]
Stem = Literal["cifar", "imagenet"]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; the defaults are the paper's (and lemniscate.pytorch's) values."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of RandomResizedCrop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w/h of the crop
    brightness: float = 0.4  # factor in [1 - 0.4, 1 + 0.4]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.4  # shift in [-0.4, 0.4] of a turn
    grayscale_p: float = 0.2
    hflip: bool = False  # the reference's CIFAR code has it commented out; TrainConfig turns it on for photos

    def __post_init__(self) -> None:
        problems = []
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            problems.append(f"crop_scale must satisfy 0 < lo <= hi <= 1 (got {self.crop_scale})")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            problems.append(f"crop_ratio must satisfy 0 < lo <= hi (got {self.crop_ratio})")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.hue <= 0.5:
            problems.append(f"hue must be in [0, 0.5] (got {self.hue})")
        if not 0 <= self.grayscale_p <= 1:
            problems.append(f"grayscale_p must be in [0, 1] (got {self.grayscale_p})")
        if problems:
            raise ValueError("invalid augmentation: " + "; ".join(problems))

    def factor_range(self, name: str) -> tuple[float, float]:
        """ColorJitter's range for brightness / contrast / saturation: [max(0, 1 - s), 1 + s]."""
        s = getattr(self, name)
        return max(0.0, 1.0 - s), 1.0 + s


PAPER_EPOCHS = 200


@dataclass
class TrainConfig:
    # --- data ---
    data: str = ""  # image folder, or "cifar10:<dir>" for the CIFAR-10 .npz arrays
    eval_data: str = ""  # optional labelled eval set (same syntax); empty: leave-one-out kNN on the collection
    image_size: int = 0  # px, square; 0: trainer/recipe.py picks it from the collection (CIFAR: 32)
    hflip: bool | None = None  # None: recipe (off for small images as in the paper's CIFAR code, on for photos)
    data_path: DataPath = "auto"  # auto: the decode-once image cache + batched augmentation (loader: PIL)
    cache_dir: str = ""  # decoded-image cache (trainer/cache.py); empty: ~/.cache/npid-search/images
    workers: int = 2  # PIL loader processes (data_path=loader)
    limit: int = 0  # use only the first N images (0: all); for smoke runs

    # --- model ---
    arch: str = "auto"  # any torchvision ResNet (resnet18, resnet50, ...); auto: recipe (CIFAR: resnet18)
    width: int = 0  # first-stage channels (64: torchvision's); 0: recipe (64), narrower for CPU budgets
    stem: Literal[Stem, "auto"] = "auto"  # cifar (3x3, no pool) | imagenet (7x7/2 + pool) | auto: cifar up to 64 px
    dim: int = 128  # embedding size (paper: 128)
    init_model: str = ""  # model.pt to start from (warm start from a published version); "": random init

    # --- objective ---
    objective: Objective = "nce"  # softmax: exact over all n; nce: m noise samples; infonce; parametric
    temperature: float | None = None  # tau; None: 0.1 for images <= 64 px (reference cifar.py's --nce-t, and
    #   Table 1's softmax row), 0.07 otherwise (paper; its ImageNet main.py). DIFFERS from the paper's 0.07 on CIFAR
    negatives: int = 4096  # m, noise samples per positive (nce, infonce)
    shared_negatives: bool = False  # one set of m noise ids per batch instead of per sample (not in the paper;
    #   see docs/nce-shared-negatives.md)
    z_momentum: float = 0.0  # 0: Z fixed after the first batch (paper); >0: running average of Z
    bank_momentum: float = 0.5  # m in v <- normalize(m v + (1 - m) f)
    bank_init: BankInit = "random"  # random unit vectors (paper) | features: the network's embeddings at step 0
    proximal: float = 0.0  # lambda of Eq. 9 (paper: 30 in its proximal experiments; 0 = off)

    # --- optimisation ---
    epochs: int = 200  # with `minutes`: a cap (0: none); without: the run's length
    minutes: float = 0.0  # wall-clock budget of the training phase (0: none). With one, the schedule follows the
    #   fraction of it spent (budgeted training), and training stops at a step boundary when it runs out. Not in the
    #   paper (a fixed epoch count)
    batch_size: int = 128
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float | None = None  # None: recipe (5e-4 small images as paper's CIFAR, 1e-4 photos as ImageNet)
    schedule: Schedule = "step"
    milestones: tuple[int, ...] = (120, 160)  # epochs at which lr *= 0.1 (schedule=step). The reference's
    #   cifar.py sets lr * 0.1 ** ((epoch - 80) // 40) from epoch 80: x0.1 at 120 and again at 160, as here
    warmup_epochs: int = 0  # linear warm-up (paper: none)

    # --- run ---
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast of the encoder on CUDA and on CPUs with native bf16 (losses stay fp32)
    compile: bool = False  # torch.compile the encoder
    adapt_threads: bool = True  # CPU: fewer training threads while another process takes a core (trainer/threads.py)
    out: str = "runs/npid"
    knn_k: tuple[int, ...] = (200,)  # k values of the weighted kNN monitor (paper: 200)
    knn_every: int = 1  # epochs between kNN monitors (0: only at the end)
    checkpoint_every: int = 10  # epochs between checkpoints (0: only at the end); always at cancel and Ctrl-C
    log_every: int = 50  # steps between reads of the loss (each read waits for the device)
    progress: bool = True  # tqdm progress bar
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with the run

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        self.knn_k = tuple(int(k) for k in self.knn_k)
        problems = []
        if self.temperature is not None and self.temperature <= 0:
            problems.append(f"temperature must be > 0 (got {self.temperature})")
        if not 0.0 <= self.bank_momentum < 1.0:
            problems.append(f"bank_momentum must be in [0, 1) (got {self.bank_momentum})")
        if not 0.0 <= self.z_momentum < 1.0:
            problems.append(f"z_momentum must be in [0, 1) (got {self.z_momentum})")
        if self.objective in SAMPLED_OBJECTIVES and self.negatives < 1:
            problems.append(f"negatives must be >= 1 for {self.objective} (got {self.negatives})")
        for name, vocabulary in (("objective", Objective), ("schedule", Schedule), ("bank_init", BankInit),
                                 ("data_path", DataPath), ("stem", Literal[Stem, "auto"])):
            if getattr(self, name) not in get_args(vocabulary):
                problems.append(f"unknown {name} {getattr(self, name)!r}")
        for name in ("checkpoint_every", "knn_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.log_every < 1:
            problems.append(f"log_every must be >= 1 (got {self.log_every})")
        for name in ("batch_size", "dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.minutes < 0:
            problems.append(f"minutes must be >= 0 (got {self.minutes})")
        if self.epochs < (0 if self.minutes > 0 else 1):
            problems.append(f"epochs must be >= 1, or 0 (no cap) with a time budget (got {self.epochs})")
        for name in ("image_size", "width"):  # 0: chosen by trainer/recipe.py
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 1, or 0 for the recipe's choice (got {getattr(self, name)})")
        if self.lr <= 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.proximal < 0:
            problems.append(f"proximal must be >= 0 (got {self.proximal})")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def budget_s(self) -> float | None:
        """The training phase's wall-clock budget in seconds, or None."""
        return self.minutes * 60 if self.minutes > 0 else None

    @property
    def schedule_epochs(self) -> int:
        """The epochs the schedule's milestones and warm-up are counted in: `epochs`, or the paper's 200 for a
        time budget without an epoch cap (its milestones then fall at 60% and 80% of the budget)."""
        return self.epochs or PAPER_EPOCHS

    @property
    def small_images(self) -> bool:
        """CIFAR-style inputs: the CIFAR stem, no flip and weight decay 5e-4 by default."""
        return is_small(self.image_size)

    @property
    def flip(self) -> bool:
        return (not self.small_images) if self.hflip is None else self.hflip

    @property
    def tau(self) -> float:
        return (0.1 if self.small_images else 0.07) if self.temperature is None else self.temperature

    @property
    def augmentation(self) -> AugmentConfig:
        """The paper's augmentation strengths, with the flip this run resolves to."""
        return AugmentConfig(hflip=self.flip)

    @property
    def decay(self) -> float:
        return (5e-4 if self.small_images else 1e-4) if self.weight_decay is None else self.weight_decay

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["knn_k"] = list(self.knn_k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        text = Path(path).read_text()
        d = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.from_dict(d or {})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
