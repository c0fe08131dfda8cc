"""`python -m trainer DATA [flags]`: the same as `npid train`, with nothing of the service imported."""

import argparse
import logging
import sys

from .cli import register

parser = argparse.ArgumentParser(prog="python -m trainer")
register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(["train", *sys.argv[1:]])
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
sys.exit(args.func(args))
