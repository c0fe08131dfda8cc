"""The image's dependency lists, read from pyproject.toml so the versions are written in one place.

    python deps.py pyproject.toml torch    # torch and torchvision, with the pins pyproject.toml gives them
    python deps.py pyproject.toml faiss    # faiss-cpu as pyproject.toml gives it (the CPU image; GPU: faiss-gpu-cu12)
    python deps.py pyproject.toml rest     # everything else

The Dockerfile installs `torch` first (from the index of the variant's build: CUDA or CPU), then its faiss,
then `rest` constrained to what is already installed, then the project itself with --no-deps, so pip never
swaps the CUDA build of torch for another one.
"""

from __future__ import annotations

import re
import sys

import tomllib  # Python >= 3.11: the image has 3.12

TORCH = ("torch", "torchvision")
SWAPPED = ("faiss-cpu",)  # the GPU image installs faiss-gpu-cu12 instead; both provide `import faiss`


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def main(pyproject: str, which: str) -> int:
    with open(pyproject, "rb") as fh:
        deps: list[str] = tomllib.load(fh)["project"]["dependencies"]
    if which == "torch":
        chosen = [d for d in deps if _name(d) in TORCH]
    elif which == "faiss":
        chosen = [d for d in deps if _name(d) in SWAPPED]
    elif which == "rest":
        chosen = [d for d in deps if _name(d) not in TORCH + SWAPPED]
    else:
        print(f"usage: python {sys.argv[0]} pyproject.toml torch|faiss|rest", file=sys.stderr)
        return 2
    print("\n".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]) if len(sys.argv) == 3 else main("", ""))
