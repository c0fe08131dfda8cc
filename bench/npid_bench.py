"""The NPID part of a step, this project vs the reference implementation, side by side in one run.

    python bench/npid_bench.py --reference /path/to/lemniscate.pytorch [--reps 7] [--threads 2]

The NPID part: noise draw, gather, logits, loss, backward to the features, memory-bank update, for a
batch of B=128 unit features of d=128 (the encoder is left out: it is the same network in both). The
reference is zhirongw/lemniscate.pytorch (the authors' code): `NCEAverage` + `NCECriterion` (NCE, m=4096,
Z fixed after the first batch) and `LinearAverage` + `nn.CrossEntropyLoss` (exact softmax), at
n = 50,000 (CIFAR-10) and n = 1,281,167 (ImageNet). Ours: `trainer.objective.NPIDObjective` with the
same settings, and the shared-negatives option (one set of m noise ids per batch) against the same
reference. Two things of the reference are adapted to run at all, both without changing its work: its
constructor moves the alias sampler to CUDA (a no-op here on a CPU-only machine), and one line of
NCEFunction.backward, `gradOutput.data.resize_(batchSize, 1, K+1)`, resized the tensor itself in the
PyTorch 0.4 it was written for but only a temporary alias today (the next bmm then fails); it becomes the
same-cost view `gradOutput = gradOutput.view(batchSize, 1, K+1)`.

Each configuration times one step of each implementation alternately (the order flips every round) after
two warm-up steps, and reports the medians and their ratio (ours / reference: below 1 is faster), so a
shared, noisy machine slows both alike. Two clocks: the process's CPU time, the primary figure (one torch
thread by default, so it is the work done; on a machine shared with other jobs the wall clock mostly
measures the wait for a core), and the wall clock. Prints the machine, versions and the command; results in
docs/npid-benchmark.md.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.trainer_bench import machine  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.objective import NPIDObjective  # noqa: E402

B, D, M, TAU, MOMENTUM = 128, 128, 4096, 0.07, 0.5
SIZES = (50_000, 1_281_167)


def load_reference(path: Path):
    """lemniscate.pytorch's lib/ modules, imported from its checkout (a read-only git mirror works too)."""
    sys.path.insert(0, str(path))
    alias = importlib.import_module("lib.alias_multinomial")
    if not torch.cuda.is_available():
        alias.AliasMethod.cuda = lambda self: None  # its constructor calls .cuda(); keep the sampler on the CPU
    nce = importlib.import_module("lib.NCEAverage")
    source = Path(nce.__file__).read_text()
    old = "gradOutput.data.resize_(batchSize, 1, K+1)"
    if old in source:  # see the module docstring
        exec(compile(source.replace(old, "gradOutput = gradOutput.view(batchSize, 1, K+1)"), nce.__file__, "exec"),
             nce.__dict__)
    linear = importlib.import_module("lib.LinearAverage")
    criterion = importlib.import_module("lib.NCECriterion")
    return nce.NCEAverage, linear.LinearAverage, criterion.NCECriterion


def unit_features(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, D, generator=g), dim=1)


class Reference:
    def __init__(self, classes, objective: str, n: int, bank: torch.Tensor):
        nce_average, linear_average, nce_criterion = classes
        if objective == "softmax":
            self.lemniscate = linear_average(D, n, TAU, MOMENTUM)
            self.criterion = nn.CrossEntropyLoss()
        else:
            self.lemniscate = nce_average(D, n, M, TAU, MOMENTUM)
            self.criterion = nce_criterion(n)
        self.lemniscate.memory.copy_(bank)

    def step(self, f: torch.Tensor, idx: torch.Tensor) -> None:
        f = f.clone().requires_grad_(True)
        loss = self.criterion(self.lemniscate(f, idx), idx)
        loss.backward()  # its backward also updates the memory


class Ours:
    def __init__(self, objective: str, n: int, bank: torch.Tensor, shared: bool):
        cfg = TrainConfig(objective=objective, dim=D, negatives=M, temperature=TAU, bank_momentum=MOMENTUM,
                          shared_negatives=shared)
        self.objective = NPIDObjective(cfg, n)
        self.objective.bank.vectors.copy_(bank)
        self.g = torch.Generator().manual_seed(0)

    def step(self, f: torch.Tensor, idx: torch.Tensor) -> None:
        f = f.clone().requires_grad_(True)
        noise = self.objective.draw_noise(B, self.g, f.device) if self.objective.needs_noise else None
        self.objective(f, idx, noise).backward()
        self.objective.update_bank(idx, f.detach())


def side_by_side(ours: Ours, ref: Reference, n: int, reps: int) -> dict[str, tuple[float, float]]:
    """Median seconds per step of (ours, reference), interleaved: {"cpu": (...), "wall": (...)}."""
    g = torch.Generator().manual_seed(1)
    times = {(clock, name): [] for clock in ("cpu", "wall") for name in ("ours", "ref")}
    impls = {"ours": ours, "ref": ref}
    for r in range(reps + 2):
        f = unit_features(r)
        idx = torch.randperm(n, generator=g)[:B]
        for name in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
            cpu, wall = time.process_time(), time.perf_counter()
            impls[name].step(f, idx)
            if r >= 2:
                times["cpu", name].append(time.process_time() - cpu)
                times["wall", name].append(time.perf_counter() - wall)
    return {clock: (statistics.median(times[clock, "ours"]), statistics.median(times[clock, "ref"]))
            for clock in ("cpu", "wall")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="a checkout of zhirongw/lemniscate.pytorch")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = load_reference(args.reference)
    print(f"Machine: {machine()}")
    print(f"Command: python {' '.join(sys.argv)}")
    print(f"Reference: {args.reference} (lemniscate.pytorch); B={B}, d={D}, m={M}, tau={TAU}; "
          f"median of {args.reps} interleaved steps after 2 warm-up steps; CPU: the process's CPU time\n")
    print("| objective | n | ours CPU (ms) | reference CPU (ms) | ours / reference (CPU) | ours / reference (wall) |")
    print("| --- | --- | --- | --- | --- | --- |")
    torch.manual_seed(0)
    for n in args.sizes:
        bank = F.normalize(torch.randn(n, D), dim=1)
        for label, objective, shared in (("exact softmax", "softmax", False), ("NCE, m=4096", "nce", False),
                                         ("NCE, m=4096 shared negatives", "nce", True)):
            ref = Reference(classes, objective, n, bank)
            ours = Ours(objective, n, bank, shared)
            t = side_by_side(ours, ref, n, args.reps)
            (cpu_ours, cpu_ref), (wall_ours, wall_ref) = t["cpu"], t["wall"]
            print(f"| {label} | {n:,} | {cpu_ours * 1e3:.1f} | {cpu_ref * 1e3:.1f} | {cpu_ours / cpu_ref:.2f} | "
                  f"{wall_ours / wall_ref:.2f} |", flush=True)
            del ref, ours


if __name__ == "__main__":
    main()
