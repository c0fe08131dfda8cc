#!/usr/bin/env bash
# Create .venv and install npid-search with its dev tools, once per change of pyproject.toml.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  log=.venv/install.log
  echo "installing npid-search and its dependencies into .venv (log: $log)" >&2
  {
    # torch/torchvision first, pinned: on this kind of machine they install from the local disk
    .venv/bin/python -m pip install --quiet --upgrade pip &&
      .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" &&
      .venv/bin/python -m pip install --quiet -e ".[dev]"
  } >"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "install failed: see $log" >&2; exit 1; }
  rm -f .venv/.installed-* && touch "$stamp"
fi
