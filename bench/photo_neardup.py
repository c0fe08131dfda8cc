"""Photos on a CPU: a time budget on a photo folder, and near-duplicate retrieval of the version it trains against
raw pixels and a perceptual hash. Results: docs/photo-benchmark.md ("Near-duplicate retrieval").

    python bench/photo_neardup.py --work /tmp/photodup --photos 1000 --queries 300 --minutes 4

1. photos: --photos generated photos (tests/photos.py: CIFAR-10 images upscaled to a 150-420 px short side,
   random aspect, some EXIF-rotated JPEGs), nothing downloaded;
2. the machine recipe on a CPU (trainer/recipe.py, as `npid train` and a job decide it: the resolution it picks
   for photos, the CPU photo recipe) trains for --minutes, a deadline: the training phase's wall clock is reported
   beside the budget, with the epochs it bought;
3. queries: --queries photos of the folder, each copied once as bench/duplicates_bench.py copies (a crop of
   60-90% of the area, resized 0.8-2x, a colour cast, mirrored half of the time), then re-encoded as JPEG at
   quality 30-90; a query is answered when its original is its nearest image (top-1) or among its 10 nearest
   (top-10) in the collection, which does not hold the copies;
4. three ways to rank the collection for a query: the version's embeddings (the query embedded by the version's
   own model and preprocessing, cosine), raw pixels (each image resized whole to 32 x 32, centred, L2-normalised,
   cosine), and imagehash.phash (64-bit, Hamming distance; ties broken by a seeded shuffle).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from duplicates_bench import make_copy  # noqa: E402
from photos import make_photo_folder  # noqa: E402
from trainer_bench import machine  # noqa: E402

from trainer import recipe  # noqa: E402
from trainer.data import load_rgb  # noqa: E402
from trainer.embed import Embedder  # noqa: E402
from trainer.progress import Progress  # noqa: E402
from trainer.train import train  # noqa: E402

PIXELS = 32  # px of the raw-pixel baseline


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def pixels(images: list[Image.Image]) -> np.ndarray:
    """n x (32*32*3) centred, unit rows."""
    x = np.stack([np.asarray(im.resize((PIXELS, PIXELS), Image.Resampling.BILINEAR), np.float32).ravel()
                  for im in images])
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def hits(scores: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Top-1 and top-10 (%) of queries whose true image ranks first / in the first ten (higher score: closer);
    ties broken by a seeded shuffle of the collection."""
    order = rng.permutation(scores.shape[1])
    ranked = order[np.argsort(-scores[:, order], axis=1, kind="stable")]  # Q x N, best first
    rank = np.argmax(ranked == truth[:, None], axis=1)
    return 100 * float(np.mean(rank < 1)), 100 * float(np.mean(rank < 10))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/photodup"))
    p.add_argument("--photos", type=int, default=1000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--minutes", type=float, default=4.0)
    args = p.parse_args()
    folder = args.work / "photos"
    if not folder.exists():
        make_photo_folder(folder, args.photos)
    collection = recipe.collection_of(str(folder))
    cfg = recipe.decide({"data": str(folder), "out": str(args.work / "run"), "progress": False, "knn_every": 0,
                         "cache_dir": str(args.work / "cache")}, collection, cuda=False, minutes=args.minutes)
    marks: dict[str, float] = {}

    def on_progress(progress: Progress) -> None:  # the last loading report (the bank filled) starts the phase
        if progress.phase == "loading" or progress.phase not in marks:
            marks[progress.phase] = time.monotonic()

    metrics = train(cfg, on_progress=on_progress, resume=False)
    phase_s = marks["embedding"] - marks["loading"]
    export = args.work / "run" / "export"
    gallery = np.load(export / "embeddings.npy")  # N x D, in items.jsonl order
    paths = [line.split('"path": "')[1].split('"')[0] for line in (export / "items.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(0)
    picked = rng.choice(len(paths), size=min(args.queries, len(paths)), replace=False)
    originals = [load_rgb(folder / p) for p in paths]
    queries = [jpeg(make_copy(originals[i], rng), int(rng.integers(30, 91))) for i in picked]

    embedder = Embedder.from_dir(export, "cpu")
    q = embedder.embed(queries)  # Q x D
    npid_scores = q @ gallery.T
    pixel_scores = pixels(queries) @ pixels(originals).T
    hashes = [imagehash.phash(im) for im in originals]
    phash_scores = -np.array([[qh - h for h in hashes] for qh in (imagehash.phash(im) for im in queries)], float)

    over = 100 * (phase_s / (60 * cfg.minutes) - 1)
    print(f"## Near-duplicate retrieval on photos\n\nMachine: {machine()}. Command: `python bench/photo_neardup.py "
          f"--photos {args.photos} --queries {args.queries} --minutes {args.minutes:g}`.\n\n"
          f"{collection.images} generated photos (median short side {collection.short_side} px); the recipe "
          f"({cfg.extra['recipe']}): {cfg.arch} width {cfg.width} at {cfg.image_size} px, {cfg.objective}, "
          f"{cfg.minutes:g} min budget: training phase {phase_s:.1f} s ({over:+.1f}% vs the budget), "
          f"{metrics['epochs']:g} epochs done. {len(picked)} queries, each a copy of one photo (crop 60-90%, "
          "resize 0.8-2x, colour cast, mirror half the time, JPEG 30-90).\n")
    print("| ranking | top-1 % | top-10 % |\n| --- | --- | --- |")
    truth = np.asarray(picked)
    for name, scores in (("NPID (this version)", npid_scores), (f"raw pixels ({PIXELS} x {PIXELS})", pixel_scores),
                         ("pHash (64-bit, Hamming)", phash_scores)):
        top1, top10 = hits(scores, truth, np.random.default_rng(1))
        print(f"| {name} | {top1:.1f} | {top10:.1f} |")


if __name__ == "__main__":
    main()
