#!/usr/bin/env bash
# The main job: install, then train on an image folder (default: the CIFAR-10 demo collection),
# print the kNN accuracy when the folder has labels, write the embeddings under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
folder=${1:-}
if [ -z "$folder" ]; then
  folder=data/demo
  archive=${NPID_DEMO_ARCHIVE:-../shared/data/cifar10/cifar10_jpeg.tar.gz}
  if [ ! -d "$folder" ]; then
    [ -f "$archive" ] || { echo "no image folder given and no demo archive at $archive" >&2; exit 2; }
    echo "extracting the demo collection (CIFAR-10 JPEG test split, 10,000 images) into $folder" >&2
    mkdir -p data/.demo-tmp
    tar -xzf "$archive" -C data/.demo-tmp
    src=$(find data/.demo-tmp -maxdepth 3 -type d -name test | head -n 1)
    mv "$src" "$folder" && rm -rf data/.demo-tmp
  fi
fi
shift || true
exec .venv/bin/npid up "$folder" "$@"
