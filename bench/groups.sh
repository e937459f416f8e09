#!/bin/bash
# FIFO message groups throughput: the S4 shape (4 producers, 4 consumers, 1 KiB, manual acks,
# prefetch 100, one transient queue) without groups and with --message-groups N.
# Broker on core 0, warren-perf on core 1. Prints one line per run: consumed msg/s and
# broker CPU (utime+stime) per message. See docs/benchmarks.md, "FIFO message groups".
#   usage: CARGO_TARGET_DIR=<dir with release/warren and release/warren-perf> bench/groups.sh [ROUNDS]
set -euo pipefail
B=${CARGO_TARGET_DIR:-target}/release
PORT=${WARREN_BENCH_PORT:-5683}
for round in $(seq "${1:-2}"); do
  for g in 0 10 1000 100000; do
    d=$(mktemp -d)
    taskset -c 0 "$B/warren" --port "$PORT" --bind 127.0.0.1 --prometheus-port 0 --mgmt-port 0 \
      --data-dir "$d" --log-level warn >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
    extra=()
    [ "$g" != 0 ] && extra=(--message-groups "$g")
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    json=$(taskset -c 1 "$B/warren-perf" --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" \
      -x 4 -y 4 -s 1024 -q 100 -z 10 "${extra[@]}" --json --quiet 2>/dev/null | tail -1)
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$d"
    python3 -c '
import json, sys
g, t0, t1, line = sys.argv[1:]
j = json.loads(line)
cpu = (int(t1) - int(t0)) / 100
rate, per_msg, loss = j["consume_rate"], cpu / j["received"] * 1e6, ("OK" if j["loss"]["ok"] else j["loss"])
print(f"groups={g}: consumed {rate:,.0f} msg/s, broker CPU {per_msg:.2f} us/msg, loss check {loss}")
' "$g" "$t0" "$t1" "$json"
  done
done
