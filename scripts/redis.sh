#!/usr/bin/env bash
# Make sure a Redis answers on NPID_REDIS_HOST:NPID_REDIS_PORT (default 127.0.0.1:6379); start one if not.
set -euo pipefail
host=${NPID_REDIS_HOST:-127.0.0.1}
port=${NPID_REDIS_PORT:-6379}
if redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
  exit 0
fi
if ! command -v redis-server >/dev/null; then
  echo "no Redis answers on $host:$port and redis-server is not installed (apt-get install redis-server)" >&2
  exit 1
fi
echo "starting redis-server on $host:$port" >&2
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/npid-redis.log"
for _ in $(seq 50); do
  redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "redis-server did not come up on $host:$port" >&2
exit 1
