#!/usr/bin/env bash
# Side-by-side benchmark: the same warren-perf scenarios against Warren and a reference
# RabbitMQ, in one run. Records rates, latency, broker CPU (CPU-seconds per million delivered
# messages, from /proc/<pid>/stat) and broker peak RSS (sampled VmRSS), repeats each scenario,
# and writes medians as JSON + markdown + a PNG plot under bench/results/<stamp>/.
#
#   bench/run.sh                 full run: 15 s per scenario, 3 repeats, S6 = 1,000,000 messages
#   bench/run.sh --quick         3 s per scenario, S6 = 100,000 messages (to try it out)
#   options: --repeat N  --time SECS  --scenarios S1,S3  --brokers warren,rabbitmq
#            --no-pin (don't pin broker and tool to different cores)  --out DIR  --skip-build
#
# Scenarios (see docs/benchmarks.md):
#   S1 1 producer, 1 consumer, 16 B, transient, autoack, one queue
#   S2 1 KiB persistent, durable queue, confirms (1000 outstanding), manual ack, prefetch 1000
#   S3 fanout to 10 queues, 10 consumers, 256 B, autoack
#   S4 4 producers, 4 consumers, 1 KiB, manual ack, prefetch 100, one queue
#   S5 latency at a fixed 1,000 msg/s, 16 B (both brokers with their default settings)
#   S5B the same with Warren started with --busy-poll (RabbitMQ's schedulers busy-wait by default)
#   S5S latency at 1,000 msg/s, 16 B, autoack, through an ordinary client that sleeps between
#       messages (amqprs; crates/perf/examples/sleepy_latency.rs), both brokers with defaults
#   S5SB the same with Warren started with --busy-poll
#   S6 1,000,000 x 1 KiB persistent with confirms into a queue with no consumer, then drained
# In S5 and S5B warren-perf spins around each send, so its own wake-ups are not counted as
# latency (it does not spin throughout: two vCPUs spinning here draw multi-ms host preemptions).
#
# Environment: CARGO_TARGET_DIR (default /tmp/target-perf), WARREN_BENCH_PORT (5682; S5B's and
# S5SB's Warren uses the next port), WARREN_BUSY_POLL_US (2000: S5B's and S5SB's broker), TOOL_BUSY_POLL_US (300:
# warren-perf in S5/S5B spins this long before each send and while awaiting its delivery),
# RABBITMQ_SH (path to shared/tools/rabbitmq.sh), RMQ_PORT (5680), RMQ_DIR (/tmp/rabbitmq-ref).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
COMMAND="bench/run.sh${*:+ $*}"

QUICK=0 REPEAT="" TIME="" SCENARIOS="S1,S2,S3,S4,S5,S5B,S5S,S5SB,S6" BROKERS="warren,rabbitmq" PIN=1 OUT="" BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --repeat) REPEAT=$2; shift ;;
    --time) TIME=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --brokers) BROKERS=$2; shift ;;
    --no-pin) PIN=0 ;;
    --out) OUT=$2; shift ;;
    --skip-build) BUILD=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
REPEAT=${REPEAT:-3}
if [ "$QUICK" = 1 ]; then TIME=${TIME:-3}; BACKLOG=100000; else TIME=${TIME:-15}; BACKLOG=1000000; fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-perf}
WARREN_PORT=${WARREN_BENCH_PORT:-5682}
WARREN_BP_PORT=$((WARREN_PORT + 1))
BUSY_POLL_US=${WARREN_BUSY_POLL_US:-2000}
TOOL_BUSY_POLL_US=${TOOL_BUSY_POLL_US:-300}
RMQ_PORT=${RMQ_PORT:-5680}
RMQ_DIR=${RMQ_DIR:-/tmp/rabbitmq-ref}
RABBITMQ_SH=${RABBITMQ_SH:-}
for candidate in "$RABBITMQ_SH" "$ROOT/../shared/tools/rabbitmq.sh" /work/shared/tools/rabbitmq.sh; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then RABBITMQ_SH=$candidate; break; fi
done
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
[ "$QUICK" = 1 ] && STAMP="$STAMP-quick"
OUT=${OUT:-$ROOT/bench/results/$STAMP}
mkdir -p "$OUT/logs"
RUNS="$OUT/runs.jsonl"
: > "$RUNS"

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# ---- build --------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  log "building warren and warren-perf (release) into $CARGO_TARGET_DIR"
  { cargo build --release -p warren -p warren-perf \
      && cargo build --release -p warren-perf --example sleepy_latency; } >"$OUT/logs/build.log" 2>&1 \
    || { tail -30 "$OUT/logs/build.log" >&2; exit 1; }
fi
WARREN_BIN="$CARGO_TARGET_DIR/release/warren"
PERF_BIN="$CARGO_TARGET_DIR/release/warren-perf"
SLEEPY_BIN="$CARGO_TARGET_DIR/release/examples/sleepy_latency"

# ---- cores: broker on core 0, load tool on the last core ----------------------------------
BROKER_CORES="" TOOL_CORES=""
if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
  BROKER_CORES=0
  TOOL_CORES=$((NCPU - 1))
  if [ "$NCPU" -ge 4 ]; then BROKER_CORES="0-$((NCPU / 2 - 1))"; TOOL_CORES="$((NCPU / 2))-$((NCPU - 1))"; fi
fi
# Command prefixes that start a process on those cores. Brokers are started there rather than
# pinned afterwards, so tokio sizes its worker pool and Erlang its schedulers to the cores they get.
ON_BROKER_CORES=() ON_TOOL_CORES=()
[ -n "$BROKER_CORES" ] && ON_BROKER_CORES=(taskset -c "$BROKER_CORES")
[ -n "$TOOL_CORES" ] && ON_TOOL_CORES=(taskset -c "$TOOL_CORES")
unpin_broker() { taskset -a -p -c "0-$((NCPU - 1))" "$1" >/dev/null 2>&1 || true; }

# ---- brokers ------------------------------------------------------------------------------
WARREN_PID="" WARREN_DATA="" WARREN_BP_PID="" WARREN_BP_DATA="" RMQ_PID=""
# While one broker is measured the others are stopped (SIGSTOP), so their background work
# (RabbitMQ's schedulers busy-wait and run periodic jobs) cannot take the measured one's core.
pause_others() { # pid being measured
  for p in $WARREN_PID $WARREN_BP_PID $RMQ_PID; do
    [ "$p" != "$1" ] && { kill -STOP "$p" 2>/dev/null || true; }
  done
  return 0
}
resume_all() {
  for p in $WARREN_PID $WARREN_BP_PID $RMQ_PID; do kill -CONT "$p" 2>/dev/null || true; done
  return 0
}
cleanup() {
  resume_all
  for pid in $WARREN_PID $WARREN_BP_PID; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for dir in $WARREN_DATA $WARREN_BP_DATA; do rm -rf "$dir"; done
  [ -n "$RMQ_PID" ] && unpin_broker "$RMQ_PID"
  return 0
}
trap cleanup EXIT

wait_port() { # port: up to 30 s
  for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

WARREN_VERSION="" RMQ_VERSION=""
if [[ ",$BROKERS," == *",warren,"* ]]; then
  if (exec 3<>"/dev/tcp/127.0.0.1/$WARREN_PORT") 2>/dev/null; then
    echo "port $WARREN_PORT is taken; set WARREN_BENCH_PORT" >&2; exit 1
  fi
  start_warren() { # port data log [flags...]: sets STARTED_PID
    local port=$1 data=$2 logf=$3; shift 3
    "${ON_BROKER_CORES[@]}" "$WARREN_BIN" --port "$port" --bind 127.0.0.1 --prometheus-port 0 --data-dir "$data" --log-level warn "$@" >"$logf" 2>&1 &
    STARTED_PID=$!
    wait_port "$port" || { echo "Warren did not start; see $logf" >&2; exit 1; }
  }
  WARREN_DATA=$(mktemp -d /tmp/warren-bench-data.XXXXXX)
  start_warren "$WARREN_PORT" "$WARREN_DATA" "$OUT/logs/warren.log"
  WARREN_PID=$STARTED_PID
  if [[ ",$SCENARIOS," == *",S5B,"* || ",$SCENARIOS," == *",S5SB,"* ]]; then
    WARREN_BP_DATA=$(mktemp -d /tmp/warren-bench-data.XXXXXX)
    start_warren "$WARREN_BP_PORT" "$WARREN_BP_DATA" "$OUT/logs/warren-busy-poll.log" --busy-poll "$BUSY_POLL_US"
    WARREN_BP_PID=$STARTED_PID
  fi
  WARREN_VERSION="$("$WARREN_BIN" --version | awk '{print $2}') ($(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet -- . ':!Cargo.lock' 2>/dev/null || echo '+dirty'))"
  log "Warren $WARREN_VERSION up on $WARREN_PORT (pid $WARREN_PID, data $WARREN_DATA)"
fi
if [[ ",$BROKERS," == *",rabbitmq,"* ]]; then
  [ -n "$RABBITMQ_SH" ] || { echo "rabbitmq.sh not found; set RABBITMQ_SH" >&2; exit 1; }
  # Restarted, so a node left running by an earlier run gets the broker cores too.
  RMQ_PORT=$RMQ_PORT RMQ_DIR=$RMQ_DIR "$RABBITMQ_SH" stop >/dev/null 2>&1 || true
  RMQ_PORT=$RMQ_PORT RMQ_DIR=$RMQ_DIR "${ON_BROKER_CORES[@]}" "$RABBITMQ_SH" start >&2
  RMQ_PID=$(RMQ_DIR=$RMQ_DIR "$RABBITMQ_SH" pid)
  RMQ_SCHEDULERS=$(RMQ_DIR=$RMQ_DIR "$RABBITMQ_SH" ctl eval 'erlang:system_info(schedulers_online).' 2>/dev/null | tr -d '\r')
  RMQ_VERSION="$(RMQ_DIR=$RMQ_DIR "$RABBITMQ_SH" ctl version 2>/dev/null | tail -1) (Erlang/OTP $(RMQ_DIR=$RMQ_DIR "$RABBITMQ_SH" ctl eval 'erlang:system_info(otp_release).' 2>/dev/null | tr -d '"'))"
  log "RabbitMQ $RMQ_VERSION up on $RMQ_PORT (pid $RMQ_PID, $RMQ_SCHEDULERS schedulers)"
fi

# broker scenario -> the instance that runs it (S5B, S5SB: the busy-polling Warren)
broker_uri() { case $1/$2 in warren/S5B|warren/S5SB) echo "amqp://guest:guest@127.0.0.1:$WARREN_BP_PORT/%2f" ;; warren/*) echo "amqp://guest:guest@127.0.0.1:$WARREN_PORT/%2f" ;; rabbitmq/*) echo "amqp://guest:guest@127.0.0.1:$RMQ_PORT/%2f" ;; esac; }
broker_pid() { case $1/$2 in warren/S5B|warren/S5SB) echo "$WARREN_BP_PID" ;; warren/*) echo "$WARREN_PID" ;; rabbitmq/*) echo "$RMQ_PID" ;; esac; }
broker_data() { case $1/$2 in warren/S5B|warren/S5SB) echo "$WARREN_BP_DATA" ;; warren/*) echo "$WARREN_DATA" ;; rabbitmq/*) echo "$RMQ_DIR/mnesia" ;; esac; }

# ---- scenarios ----------------------------------------------------------------------------
scenario_flags() {
  case $1 in
    S1) echo "-x 1 -y 1 -s 16 -a -z $TIME" ;;
    S2) echo "-x 1 -y 1 -s 1024 --persistent --durable -c 1000 -q 1000 -z $TIME" ;;
    S3) echo "-x 1 -y 10 -s 256 -t fanout --queues 10 -a -z $TIME" ;;
    S4) echo "-x 4 -y 4 -s 1024 -q 100 -z $TIME" ;;
    S5|S5B) echo "-x 1 -y 1 -s 16 -a -r 1000 --busy-poll $TOOL_BUSY_POLL_US -z $TIME" ;;
    S5S|S5SB) echo "--rate 1000 --size 16 --seconds $TIME --json" ;;
    S6) echo "--scenario backlog -x 1 -y 1 -s 1024 --persistent --durable -c 1000 -q 1000 -C $BACKLOG" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
}
scenario_title() {
  case $1 in
    S1) echo "1 producer, 1 consumer, 16 B, transient, autoack" ;;
    S2) echo "1 KiB persistent, durable queue, confirms 1000, manual ack, prefetch 1000" ;;
    S3) echo "fanout to 10 queues, 10 consumers, 256 B, autoack" ;;
    S4) echo "4 producers, 4 consumers, 1 KiB, manual ack, prefetch 100" ;;
    S5) echo "latency at a fixed 1,000 msg/s, 16 B, default settings" ;;
    S5B) echo "S5 with Warren --busy-poll $BUSY_POLL_US (RabbitMQ: default, its schedulers busy-wait)" ;;
    S5S) echo "latency at 1,000 msg/s, 16 B, a client that sleeps between messages (amqprs), default settings" ;;
    S5SB) echo "S5S with Warren --busy-poll $BUSY_POLL_US (RabbitMQ: default)" ;;
    S6) echo "$BACKLOG x 1 KiB persistent with confirms into an idle queue, then drained" ;;
  esac
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Samples peak VmRSS (kB) of a pid, and with a directory its peak disk use (kB), every 0.25 s
# until $3 exists; writes "peak_rss_kb peak_disk_kb" to $4. One long-lived process that forks
# nothing: a fork+exec per sample (awk, du, sleep) would steal milliseconds from the pinned
# broker or tool and show up as latency outliers.
sampler() {
  python3 - "$@" <<'PY'
import os, sys, time
pid, top, stop, out = sys.argv[1:5]
peak = dpeak = 0
def disk_kb(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total // 1024
while not os.path.exists(stop):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]))
    except OSError:
        pass
    if top:
        dpeak = max(dpeak, disk_kb(top))
    with open(out, "w") as f:
        f.write(f"{peak} {dpeak}\n")
    time.sleep(0.25)
PY
}

run_one() { # broker scenario repeat
  local broker=$1 sc=$2 rep=$3 pid uri data flags before after t0 t1 rc=0 line disk_dir="" disk_before=0
  pid=$(broker_pid "$broker" "$sc"); uri=$(broker_uri "$broker" "$sc"); data=$(broker_data "$broker" "$sc")
  flags=$(scenario_flags "$sc")
  [ "$sc" = S6 ] && { disk_dir=$data; disk_before=$(du -sk "$data" | cut -f1); }
  local base="$OUT/logs/$sc-$broker-$rep"
  rm -f "$base.stop"
  pause_others "$pid"
  sampler "$pid" "$disk_dir" "$base.stop" "$base.peak" &
  local sampler_pid=$!
  before=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
  # shellcheck disable=SC2086 # flags are words on purpose
  case $sc in
    S5S|S5SB) # the sleeping amqprs client takes host and port, not a URI
      local hostport=${uri#*@}; hostport=${hostport%%/*}
      timeout $(( ${TIME%.*} + 900 )) "${ON_TOOL_CORES[@]}" "$SLEEPY_BIN" --host "${hostport%:*}" \
        --port "${hostport##*:}" $flags >"$base.json" 2>"$base.log" || rc=$? ;;
    *)
      timeout $(( ${TIME%.*} + 900 )) "${ON_TOOL_CORES[@]}" "$PERF_BIN" --uri "$uri" --json --quiet $flags \
        >"$base.json" 2>"$base.log" || rc=$? ;;
  esac
  after=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
  touch "$base.stop"; wait "$sampler_pid" 2>/dev/null || true
  resume_all
  read -r peak_kb disk_kb < "$base.peak" || { peak_kb=0; disk_kb=0; }
  line=$(tail -1 "$base.json")
  if ! python3 -c 'import json,sys; json.loads(sys.argv[1])' "$line" 2>/dev/null; then
    line='null'
    log "  $sc $broker #$rep: no report (exit $rc); see $base.log"
  fi
  python3 - "$RUNS" "$broker" "$sc" "$rep" "$rc" "$before" "$after" "$CLK_TCK" "$t0" "$t1" \
    "$peak_kb" "$disk_kb" "$disk_before" "$line" <<'PY'
import json, sys
(runs, broker, sc, rep, rc, before, after, tck, t0, t1, peak, disk, disk0, line) = sys.argv[1:]
report = json.loads(line)
if report:
    report.pop("per_second", None)
rec = {
    "broker": broker, "scenario": sc, "repeat": int(rep), "exit_code": int(rc),
    "broker_cpu_secs": (float(after) - float(before)) / float(tck),
    "wall_secs": float(t1) - float(t0),
    "broker_peak_rss_kb": int(peak), "disk_peak_kb": int(disk), "disk_before_kb": int(disk0),
    "report": report,
}
with open(runs, "a") as f:
    f.write(json.dumps(rec) + "\n")
r = report or {}
lat = (r.get("latency") or {})
print(f"  {sc} {broker:8s} #{rep}: exit {rc}, sent {r.get('sent', 0):,} received {r.get('received', 0):,}, "
      f"publish {r.get('publish_rate', 0):,.0f}/s consume {r.get('consume_rate', 0):,.0f}/s, "
      f"p50 {lat.get('p50_us', 0)/1000:.2f} ms p99 {lat.get('p99_us', 0)/1000:.2f} ms, "
      f"cpu {rec['broker_cpu_secs']:.1f} s, rss {int(peak)/1024:.0f} MB", file=sys.stderr)
PY
}

cat > "$OUT/meta.json" <<JSON
{"stamp": "$STAMP", "quick": $QUICK, "repeat": $REPEAT, "time_secs": $TIME, "backlog_messages": $BACKLOG,
 "nproc": $NCPU, "kernel": "$(uname -r)", "cpu": "$(lscpu 2>/dev/null | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}')",
 "memory": "$(free -h 2>/dev/null | awk '/^Mem:/ {print $2}')",
 "warren_version": "$WARREN_VERSION", "rabbitmq_version": "$RMQ_VERSION",
 "broker_cores": "$BROKER_CORES", "tool_cores": "$TOOL_CORES",
 "command": "$COMMAND",
 "scenarios": {$(for sc in ${SCENARIOS//,/ }; do printf '"%s": {"title": "%s", "flags": "%s"},' "$sc" "$(scenario_title "$sc")" "$(scenario_flags "$sc")"; done | sed 's/,$//')}}
JSON

log "scenarios $SCENARIOS x $REPEAT repeats, ${TIME}s each (S6: $BACKLOG messages); broker cores '${BROKER_CORES:-any}', tool cores '${TOOL_CORES:-any}'"
for sc in ${SCENARIOS//,/ }; do
  log "$sc: $(scenario_title "$sc")"
  for rep in $(seq 1 "$REPEAT"); do
    # Alternate which broker goes first, so slow drifts of the machine hit both alike.
    order=${BROKERS//,/ }
    [ $((rep % 2)) = 0 ] && order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
    for broker in $order; do
      run_one "$broker" "$sc" "$rep"
      sleep 1
    done
  done
done

# ---- report -------------------------------------------------------------------------------
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib for the plot"
  python3 -m pip install --quiet --disable-pip-version-check matplotlib >&2 || log "matplotlib unavailable: no plot"
fi
python3 "$ROOT/bench/report.py" "$OUT"
log "results in $OUT"
