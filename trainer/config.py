"""One typed config for a training run: the single source of truth.

Defaults are the paper's CIFAR-10 recipe (Wu et al. 2018, and the authors' `lemniscate.pytorch`):
ResNet-18, d=128, tau=0.07 for NCE / 0.1 for the full softmax in Table 1, bank momentum 0.5,
SGD lr 0.03 momentum 0.9, 200 epochs, x0.1 at epochs 120 and 160. Where a default differs from the
paper it says so in the comment.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Objective = Literal["softmax", "nce", "infonce", "parametric"]
Schedule = Literal["step", "cosine"]
DataPath = Literal["auto", "device", "loader"]
BankInit = Literal["random", "features"]


@dataclass
class TrainConfig:
    # --- data ---
    data: str = ""  # image folder, or "cifar10:<dir>" for the CIFAR-10 .npz arrays
    eval_data: str = ""  # optional labelled eval set (same syntax); empty: leave-one-out kNN on the collection
    image_size: int = 32  # px, square; images <= 64 px get the CIFAR stem
    hflip: bool | None = None  # None: off for images <= 64 px (paper's CIFAR code), on for larger photos
    data_path: DataPath = "auto"  # device: uint8 images in device memory + batched augmentation
    workers: int = 2  # PIL loader processes (data_path=loader)
    limit: int = 0  # use only the first N images (0: all); for smoke runs

    # --- model ---
    arch: str = "resnet18"  # any torchvision ResNet: resnet18, resnet34, resnet50, ...
    width: int = 64  # first-stage channels; 64 is torchvision's ResNet, smaller for CPU runs
    dim: int = 128  # embedding size (paper: 128)
    init_model: str = ""  # model.pt to start from (warm start from a published version); "": random init

    # --- objective ---
    objective: Objective = "nce"  # softmax: exact over all n; nce: m noise samples; infonce; parametric
    temperature: float = 0.07  # tau (paper: 0.07; Table 1's full-softmax row used 0.1 in the reference code)
    negatives: int = 4096  # m, noise samples per positive (nce, infonce)
    z_momentum: float = 0.0  # 0: Z fixed after the first batch (paper); >0: running average of Z
    bank_momentum: float = 0.5  # m in v <- normalize(m v + (1 - m) f)
    bank_init: BankInit = "random"  # random unit vectors (paper) | features: the network's embeddings at step 0
    proximal: float = 0.0  # lambda of Eq. 9 (paper: 30 in its proximal experiments; 0 = off)

    # --- optimisation ---
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 for images <= 64 px (paper's CIFAR), 1e-4 otherwise (ImageNet)
    schedule: Schedule = "step"
    milestones: tuple[int, ...] = (120, 160)  # epochs at which lr *= 0.1 (schedule=step)
    warmup_epochs: int = 0  # linear warm-up (paper: none)

    # --- run ---
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast + channels_last on CUDA (ignored on the CPU)
    compile: bool = False  # torch.compile the encoder
    out: str = "runs/npid"
    knn_k: tuple[int, ...] = (200,)  # k values of the weighted kNN monitor (paper: 200)
    knn_every: int = 1  # epochs between kNN monitors (0: only at the end)
    progress: bool = True  # tqdm progress bar
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with the run

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        self.knn_k = tuple(int(k) for k in self.knn_k)
        problems = []
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0 (got {self.temperature})")
        if not 0.0 <= self.bank_momentum < 1.0:
            problems.append(f"bank_momentum must be in [0, 1) (got {self.bank_momentum})")
        if not 0.0 <= self.z_momentum < 1.0:
            problems.append(f"z_momentum must be in [0, 1) (got {self.z_momentum})")
        if self.objective in ("nce", "infonce") and self.negatives < 1:
            problems.append(f"negatives must be >= 1 for {self.objective} (got {self.negatives})")
        if self.objective not in ("softmax", "nce", "infonce", "parametric"):
            problems.append(f"unknown objective {self.objective!r}")
        if self.schedule not in ("step", "cosine"):
            problems.append(f"unknown schedule {self.schedule!r}")
        if self.bank_init not in ("random", "features"):
            problems.append(f"unknown bank_init {self.bank_init!r}")
        if self.data_path not in ("auto", "device", "loader"):
            problems.append(f"unknown data_path {self.data_path!r}")
        for name in ("epochs", "batch_size", "image_size", "dim", "width"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.proximal < 0:
            problems.append(f"proximal must be >= 0 (got {self.proximal})")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def small_images(self) -> bool:
        """CIFAR-style inputs: the CIFAR stem, no flip and weight decay 5e-4 by default."""
        return self.image_size <= 64

    @property
    def flip(self) -> bool:
        return (not self.small_images) if self.hflip is None else self.hflip

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
