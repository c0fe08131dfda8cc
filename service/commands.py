"""`npid serve`: the HTTP API and web page under uvicorn. Settings come from NPID_* variables and .env.
Also the query embedding that `npid index search --image` uses (the index itself knows no models)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the search API and web page (settings: NPID_* variables, .env)",
                              description="Serve the live index version over HTTP. Configure with NPID_* "
                                          "environment variables or a .env file (see service/settings.py).")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower())
    return 0


def embed_image_file(version_dir: Path, image: str) -> np.ndarray:
    """An image file embedded with a version's own model and preprocessing -> 1 x D."""
    from trainer.data import load_rgb  # torch is imported only when a query image is embedded
    from trainer.embed import Embedder

    return Embedder.from_dir(version_dir).embed([load_rgb(image)])
