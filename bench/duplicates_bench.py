"""Near-duplicate groups (GET /duplicates, `npid duplicates`) against a perceptual-hash baseline, on copies hidden
in a real collection. Results: docs/duplicates-benchmark.md.

    python bench/duplicates_bench.py --work /tmp/dupbench --per-class 500 --originals 300 --minutes 4

Measured on: AMD EPYC, 2 cores (shared), no GPU; python 3.11.7, torch 2.14.1, faiss 1.15.1, imagehash 4.3.2
(numpy 2.4, Pillow 13). The script prints its own machine and versions line with the tables.

1. collection: the first --per-class images of each class of the CIFAR-10 JPEG demo tree
   (/work/shared/data/cifar10/cifar10_jpeg.tar.gz, train/<class>/NNNN.jpg), 32 x 32 px;
2. copies: --originals of them drawn (seed 0), each given one copy, a third of them a second one, written beside
   them as <class>/dup_<n>.jpg: a crop of 60-90% of the area (aspect 3:4 to 4:3, anywhere), resized to 0.8-2x,
   a colour cast (each channel x 0.92-1.08), mirrored half of the time, JPEG quality 30-90. This generator is
   written here, apart from the one that calibrates the threshold (trainer/quality.py:copy_view): other colour
   change, other resize range;
3. the project's CPU recipe trains on the whole folder: `npid train FOLDER --minutes M --out RUN`; the version is
   measured as a job measures it at publish (service/jobs/promotion.py:export_quality, which now calibrates the
   duplicate threshold) and built: `npid index build RUN/export --store STORE`;
4. groups at the version's default threshold (and at the server's on-the-fly estimate, and a sweep), against
   imagehash.phash (64-bit) with Hamming distance <= 10 over all pairs, both grouped the same way
   (connected components, index/duplicates.py:components).

Scores count pairs: a family is an original with its copies (its true pairs: every two of them); precision =
pairs inside found groups that are true pairs / all pairs inside found groups; recall = true pairs that landed in
one group / all true pairs. CIFAR-10 holds a few near duplicates of its own, which count against both methods.
Each phase is skipped when its output is already in --work.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from trainer_bench import machine  # noqa: E402

from index import ArtifactStore  # noqa: E402
from index.duplicates import components, duplicate_groups, live_graph  # noqa: E402
from trainer.quality import separating_threshold  # noqa: E402

CIFAR = Path("/work/shared/data/cifar10/cifar10_jpeg.tar.gz")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PHASH_MAX_DISTANCE = 10  # bits of 64: imagehash's usual cut for "the same picture"


def npid(*args: str) -> None:
    command = [sys.executable, "-m", "service.cli", *args]
    print("$ npid " + " ".join(args), file=sys.stderr)
    subprocess.run(command, check=True, cwd=ROOT)


def extract(folder: Path, per_class: int) -> None:
    wanted = {f"train/{c}/{i:04d}.jpg" for c in CLASSES for i in range(per_class)}
    with tarfile.open(CIFAR) as tar:
        for member in tar:
            if member.name in wanted:
                target = folder / member.name.removeprefix("train/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())


def make_copy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = img.size
    area = rng.uniform(0.6, 0.9) * width * height
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = min(width, round(math.sqrt(area * aspect))), min(height, round(math.sqrt(area / aspect)))
    left, top = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
    out = img.crop((left, top, left + cw, top + ch))
    scale = rng.uniform(0.8, 2.0)
    out = out.resize((max(8, round(cw * scale)), max(8, round(ch * scale))), Image.Resampling.LANCZOS)
    cast = rng.uniform(0.92, 1.08, 3)
    out = Image.fromarray(np.clip(np.asarray(out, np.float32) * cast, 0, 255).astype(np.uint8))
    return ImageOps.mirror(out) if rng.random() < 0.5 else out


def plant_copies(folder: Path, originals: int, seed: int = 0) -> list[list[str]]:
    """Copies written beside their originals -> the families [original, copy, ...] as collection paths."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    families = []
    for n, i in enumerate(rng.choice(len(files), originals, replace=False)):
        original = files[int(i)]
        with Image.open(folder / original) as im:
            img = im.convert("RGB")
        family = [original]
        for c in range(2 if n % 3 == 0 else 1):
            path = f"{original.split('/')[0]}/dup_{n:04d}_{c}.jpg"
            make_copy(img, rng).save(folder / path, "JPEG", quality=int(rng.integers(30, 91)))
            family.append(path)
        families.append(family)
    return families


def pair_scores(groups: list[list[int]], family_of: dict[int, int], true_pairs: int) -> dict:
    """Precision and recall of the pairs inside `groups` (lists of item keys) against the families."""
    in_groups = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    correct = 0
    for g in groups:
        counts: dict[int, int] = {}
        for key in g:
            if key in family_of:
                counts[family_of[key]] = counts.get(family_of[key], 0) + 1
        correct += sum(c * (c - 1) // 2 for c in counts.values())
    return {"groups": len(groups), "images": sum(len(g) for g in groups), "pairs": in_groups,
            "precision": 100.0 * correct / in_groups if in_groups else float("nan"),
            "recall": 100.0 * correct / true_pairs}


def phash_groups(folder: Path, paths: list[str], max_distance: int) -> tuple[list[list[int]], float]:
    """Groups of the paths (by index) whose 64-bit pHashes lie within max_distance bits, over all pairs."""
    import imagehash

    t0 = time.perf_counter()
    hashes = np.empty(len(paths), dtype=np.uint64)
    for i, p in enumerate(paths):
        with Image.open(folder / p) as im:
            bits = imagehash.phash(im).hash.flatten()  # 64 bools
        hashes[i] = np.packbits(bits).view(">u8")[0]
    a, b = [], []
    for start in range(0, len(paths), 1024):
        d = np.bitwise_count(hashes[start:start + 1024, None] ^ hashes[None, :])  # c x N
        i, j = np.nonzero(d <= max_distance)
        keep = start + i < j
        a.append(start + i[keep])
        b.append(j[keep])
    label = components(len(paths), np.concatenate(a), np.concatenate(b))
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(label.tolist()):
        groups.setdefault(lab, []).append(i)
    return [g for g in groups.values() if len(g) > 1], time.perf_counter() - t0


def publish_cosines(export: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The calibration's two samples, as measured at publish: copies to their images, images to their nearest
    others."""
    from service.jobs.promotion import exported_collection
    from trainer.embed import load_model_and_config
    from trainer.preprocess import Preprocess
    from trainer.quality import copy_cosines, load_sample, sample_ids

    encoder, _ = load_model_and_config(export / "model.pt", "cpu")
    pre = Preprocess.load(export / "preprocess.json")
    ds = exported_collection(export, folder)
    ids = sample_ids(len(ds))
    gallery = torch.from_numpy(np.load(export / "embeddings.npy"))
    return copy_cosines(encoder.eval(), load_sample(ds, ids, pre), ids, gallery, pre)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/dupbench")
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--originals", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=4.0)
    args = ap.parse_args()
    work = Path(args.work)
    folder, run, store = work / "images", work / "run", work / "store"

    if not (work / "families.json").exists():
        extract(folder, args.per_class)
        (work / "families.json").write_text(json.dumps(plant_copies(folder, args.originals)))
    families = json.loads((work / "families.json").read_text())
    if not (run / "export" / "export.json").exists():
        npid("train", str(folder), "--minutes", f"{args.minutes:g}", "--out", str(run))
    export_meta = json.loads((run / "export" / "export.json").read_text())
    if "duplicate_threshold" not in export_meta.get("quality", {}):
        from service.jobs.promotion import export_quality, exported_collection
        from trainer.config import TrainConfig
        from trainer.quality import record_in_export

        t0 = time.perf_counter()
        flip = TrainConfig.from_dict(export_meta["train_config"]).flip
        quality = export_quality(run / "export", exported_collection(run / "export", folder), torch.device("cpu"),
                                 flip)
        record_in_export(run / "export", quality)
        print(f"measured at publish in {time.perf_counter() - t0:.1f} s: {quality}", file=sys.stderr)
    if not (store / "CURRENT").exists():
        npid("index", "build", str(run / "export"), "--store", str(store))

    lv = ArtifactStore(store).load()
    items = lv.searcher.metadata
    row_of = {it.path: it.id for it in items}
    family_of = {row_of[p]: f for f, fam in enumerate(families) for p in fam if p in row_of}
    true_pairs = sum(len(f) * (len(f) - 1) // 2 for f in families)
    t0 = time.perf_counter()
    graph = live_graph(lv.searcher)
    graph_s = time.perf_counter() - t0
    quality = lv.manifest["quality"]
    calibrated = quality["duplicate_threshold"]

    from service.live.duplicates import estimate_for_version

    t0 = time.perf_counter()
    estimated = estimate_for_version(lv, graph)
    estimate_s = time.perf_counter() - t0

    def npid_row(threshold: float) -> dict:
        return pair_scores([g.ids.tolist() for g in duplicate_groups(graph, threshold)], family_of, true_pairs)

    paths = [it.path for it in items]
    by_index = {i: family_of[row_of[p]] for i, p in enumerate(paths) if row_of[p] in family_of}
    phash_rows = {}
    for distance in (6, PHASH_MAX_DISTANCE, 14):
        groups, phash_s = phash_groups(folder, paths, distance)
        phash_rows[distance] = (pair_scores(groups, by_index, true_pairs), phash_s)

    lines = [f"machine: {machine()}; faiss {__import__('faiss').__version__}, "
             f"imagehash {__import__('imagehash').__version__}",
             f"collection: {len(items)} images ({len(items) - sum(len(f) - 1 for f in families)} CIFAR-10 JPEGs, "
             f"{sum(len(f) - 1 for f in families)} planted copies of {len(families)} of them); "
             f"{true_pairs} true pairs",
             f"model: {export_meta['train_config']['arch']}, {export_meta['train_config']['image_size']} px, "
             f"{export_meta['metrics']['epochs']:.1f} epochs in {export_meta['metrics']['train_seconds']:.0f} s "
             f"(the CPU recipe, --minutes {args.minutes:g}); label-free self_top1 {quality['self_top1']:.1f}%, "
             f"leave-one-out kNN top-1 {export_meta['metrics']['knn']['top1@200']:.1f}%",
             f"calibration at publish: threshold {calibrated:.4f}, copies kept {quality['duplicate_recall']:.1f}%, "
             f"nearest others above {quality['duplicate_nearest_above']:.1f}% (sample {quality['duplicate_sample']})",
             f"k-NN graph (exact, k=10) of {len(items)} images: {graph_s:.2f} s; "
             f"on-the-fly estimate: {estimate_s:.1f} s",
             "", "| method | threshold | groups | images in groups | pairs in groups | precision % | recall % |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def row(name: str, threshold: str, r: dict) -> str:
        return (f"| {name} | {threshold} | {r['groups']} | {r['images']} | {r['pairs']} | {r['precision']:.1f} | "
                f"{r['recall']:.1f} |")

    lines.append(row("NPID, default (calibrated at publish)", f"cos >= {calibrated:.4f}", npid_row(calibrated)))
    if estimated:
        t = estimated["duplicate_threshold"]
        lines.append(row("NPID, server's estimate (versions without one)", f"cos >= {t:.4f}", npid_row(t)))
    r, s = phash_rows[PHASH_MAX_DISTANCE]
    lines.append(row(f"pHash 64-bit ({s:.1f} s)", f"Hamming <= {PHASH_MAX_DISTANCE}", r))
    lines += ["", "Sweeps:", "", "| method | threshold | groups | images in groups | pairs in groups | precision % | "
              "recall % |", "| --- | --- | --- | --- | --- | --- | --- |"]
    balanced = separating_threshold(*publish_cosines(run / "export", folder))
    lines.append(row("NPID, the balanced point alone (no 5% cap)", f"cos >= {balanced:.4f}", npid_row(balanced)))
    nearest = graph.nearest()
    for q in (0.9, 0.95, 0.97, 0.99, 0.995):
        t = float(np.quantile(nearest, q))
        lines.append(row(f"NPID, top {100 * (1 - q):g}% of nearest cosines", f"cos >= {t:.4f}", npid_row(t)))
    for distance in (6, 14):
        r, _ = phash_rows[distance]
        lines.append(row("pHash 64-bit", f"Hamming <= {distance}", r))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
