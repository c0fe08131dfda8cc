"""A time budget under load: does the training phase end on its deadline when another process takes a core
after training has begun, and what images/s does it keep meanwhile? Results go to docs/deadline-benchmark.md.

    python bench/textures.py /tmp/textures2000 --per-class 250
    python bench/deadline_bench.py /tmp/textures2000 --minutes 1 --load-after 15 > docs/deadline-benchmark.md

Three runs of the machine recipe on a CPU (trainer/recipe.py, as a job trains it), each with `--minutes` of
budget and all cores: idle; with a busy process (a spinning Python loop, one core) started `--load-after` seconds
into the training phase; the same load with the thread tuner off (`adapt_threads=False`: torch's threads as they
are). The training phase is timed from the last "loading" report (the memory bank filled) to the "embedding" one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer_bench import machine  # noqa: E402

from trainer import recipe  # noqa: E402
from trainer.progress import Progress  # noqa: E402
from trainer.train import train  # noqa: E402

SPIN = "while True: pass"


def one_run(data: str, minutes: float, load_after: float | None, adapt: bool, out: Path) -> dict:
    cfg = recipe.decide({"data": data, "out": str(out), "progress": False, "knn_every": 0, "adapt_threads": adapt},
                        recipe.collection_of(data), cuda=False, minutes=minutes)
    marks: dict[str, float] = {}
    busy: list[subprocess.Popen] = []

    def start_load() -> None:
        busy.append(subprocess.Popen([sys.executable, "-c", SPIN]))
        marks["load"] = time.monotonic()

    def on_progress(p: Progress) -> None:  # the last loading report (the bank filled) starts the training phase
        if p.phase == "loading":
            marks["train"] = time.monotonic()
        elif p.phase == "training" and "load_timer" not in marks and load_after is not None:
            marks["load_timer"] = 0.0
            threading.Timer(load_after - (time.monotonic() - marks["train"]), start_load).start()
        elif p.phase == "embedding" and "end" not in marks:
            marks["end"] = time.monotonic()

    try:
        metrics = train(cfg, on_progress=on_progress, resume=False)
    finally:
        for p in busy:
            p.kill()
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    load_at = marks.get("load", float("inf")) - marks["train"]
    elapsed, idle_rates, loaded_rates = 0.0, [], []
    for row in rows:  # an epoch's rate counts as loaded when the load ran for all of it
        (loaded_rates if elapsed >= load_at else idle_rates if elapsed + row["epoch_s"] <= load_at else []).append(
            row["images_per_s"])
        elapsed += row["epoch_s"]
    phase = marks["end"] - marks["train"]
    return {"budget_s": minutes * 60, "phase_s": phase, "over": phase / (minutes * 60) - 1,
            "epochs": metrics["epochs"],
            "idle": statistics.median(idle_rates) if idle_rates else None,
            "loaded": statistics.median(loaded_rates) if loaded_rates else None,
            "knn": metrics.get("knn", {}).get("top1@200")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="an image folder")
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--load-after", type=float, default=15.0, help="seconds into training before the load starts")
    args = p.parse_args()
    cases = [("idle", None, True), (f"a core taken after {args.load_after:g} s, tuner on", args.load_after, True),
             (f"a core taken after {args.load_after:g} s, tuner off", args.load_after, False)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, load, adapt) in enumerate(cases):
            r = one_run(args.data, args.minutes, load, adapt, Path(tmp) / str(i))
            rows.append((name, r))
            print(name, r, file=sys.stderr)
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    print(f"# Time budgets under load\n\nMachine: {machine()}. Command: `python bench/deadline_bench.py {args.data} "
          f"--minutes {args.minutes:g} --load-after {args.load_after:g}` (all {torch.get_num_threads()} threads; the "
          "machine recipe on a CPU, trainer/recipe.py).\n")
    print("| run | budget | training phase | vs budget | epochs done | images/s before the load | images/s under "
          "load | kNN top-1 |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows:
        knn = "-" if r["knn"] is None else f"{r['knn']:.2f}%"
        print(f"| {name} | {r['budget_s']:.0f} s | {r['phase_s']:.1f} s | {100 * r['over']:+.1f}% | "
              f"{r['epochs']:.2f} | {fmt(r['idle'])} | {fmt(r['loaded'])} | {knn} |")


if __name__ == "__main__":
    main()
