#!/usr/bin/env bash
# Queue scale: declares N queues one after another (then deletes them all) against a fresh
# Warren and reports queue.declare/s and queue.delete/s at 1k, 10k, 50k and 100k existing
# queues (warren-perf --scenario queue-scale), plus the broker's RSS per queue (peak RSS,
# VmHWM, minus the RSS before the first declare, divided by N).
#
#   bench/queues.sh                       100,000 non-durable queues, one client
#   options: --queues N  --concurrency C (clients sharing the queues)  --durable
#            --warren PATH --perf PATH (binaries; default: build release ones)  --port P
#
# Environment: CARGO_TARGET_DIR (default /tmp/target-perf).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUEUES=100000 CONCURRENCY=1 DURABLE="" WARREN="" PERF="" PORT=5690
while [ $# -gt 0 ]; do
  case "$1" in
    --queues) QUEUES=$2; shift ;;
    --concurrency) CONCURRENCY=$2; shift ;;
    --durable) DURABLE=--durable ;;
    --warren) WARREN=$2; shift ;;
    --perf) PERF=$2; shift ;;
    --port) PORT=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-perf}
if [ -z "$WARREN" ] || [ -z "$PERF" ]; then
  cargo build --release -q -p warren -p warren-perf
  WARREN=${WARREN:-$CARGO_TARGET_DIR/release/warren}
  PERF=${PERF:-$CARGO_TARGET_DIR/release/warren-perf}
fi

DATA=$(mktemp -d /tmp/warren-bench-queues.XXXXXX)
"$WARREN" --bind 127.0.0.1 --port "$PORT" --data-dir "$DATA" --log-level warn &
BROKER=$!
trap 'kill $BROKER 2>/dev/null; wait $BROKER 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 300); do
  (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
  sleep 0.1
done
kib() { awk -v key="$1:" '$1 == key { print $2 }' /proc/"$BROKER"/status; }
RSS_START=$(kib VmRSS)
"$PERF" --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --scenario queue-scale -C "$QUEUES" \
  --concurrency "$CONCURRENCY" $DURABLE --quiet
PEAK=$(kib VmHWM)
RSS_END=$(kib VmRSS)
echo "broker RSS: ${RSS_START} KiB at start, peak ${PEAK} KiB, ${RSS_END} KiB after deleting"
awk -v s="$RSS_START" -v p="$PEAK" -v n="$QUEUES" \
  'BEGIN { printf "RSS per queue: %.2f KiB ((peak - start) / %d)\n", (p - s) / n, n }'
