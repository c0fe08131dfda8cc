#!/usr/bin/env bash
# The test command: installs what it needs, makes sure Redis, Chromium and docker-compose are there (and, for
# -m docker, Docker's engine and debootstrap), runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/trainer -x, or -m slow for the long checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/redis.sh
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)) \
    || echo "could not install chromium: the browser test will be skipped" >&2
fi
if ! command -v docker-compose >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -qq docker-compose >/dev/null 2>&1 \
    || (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null)) \
    || echo "could not install docker-compose: the compose file check will be skipped" >&2
fi
if [[ " $* " == *docker* ]] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # the deploy tests (-m docker, -m docker_gpu): Debian's engine, and debootstrap for local base images
  for tool in dockerd:docker.io debootstrap:debootstrap; do
    command -v "${tool%%:*}" >/dev/null || apt-get install -y -qq "${tool#*:}" >/dev/null \
      || (apt-get update -qq && apt-get install -y -qq "${tool#*:}" >/dev/null)
  done
fi
exec .venv/bin/python -m pytest "$@"
