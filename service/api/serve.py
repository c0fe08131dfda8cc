"""`npid serve`: the HTTP API and web page under uvicorn. Settings come from NPID_* variables and .env."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the search API and web page (settings: NPID_* variables, .env)",
                              description="Serve the live index version over HTTP. Configure with NPID_* "
                                          "environment variables or a .env file (see service/settings.py).")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..settings import load_settings
    from .app import create_app

    settings = load_settings()  # a SettingsError: service/cli.py says it
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower())
    return 0
