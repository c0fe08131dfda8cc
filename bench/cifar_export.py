"""Embed all 50,000 CIFAR-10 training images with a trained run's model and write a trainer export, so the
index benchmark can use real embeddings at 50,000 (`bench/index_bench.py --export <out>`).

    python bench/cifar_export.py runs/bench-cifar-cpu/export runs/cifar50k-export
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.data import load_cifar10  # noqa: E402
from trainer.embed import embed_dataset, load_model_and_config, write_export  # noqa: E402
from trainer.preprocess import Preprocess  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="a trainer export (model.pt + preprocess.json)")
    p.add_argument("out", type=Path)
    p.add_argument("--cifar", default=str(ROOT.parent / "shared/data/cifar10"))
    args = p.parse_args()
    encoder, model_cfg = load_model_and_config(args.model_dir / "model.pt")
    pre = Preprocess.load(args.model_dir / "preprocess.json")
    ds = load_cifar10(args.cifar, "train")
    feats = embed_dataset(encoder, ds, pre, "cpu").numpy()
    write_export(args.out, feats, ds, encoder, model_cfg, pre, {"metrics": {"source": str(args.model_dir)}})
    print(f"wrote {args.out}: {feats.shape}")


if __name__ == "__main__":
    main()
