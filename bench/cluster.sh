#!/usr/bin/env bash
# Rerunnable benchmarks of a local 3-node cluster (the figures in the README come from here).
#
#   bench/cluster.sh [throughput|idle|scaledown|restart|chaos|floor|all]   (default: all)
#
# Nodes run with one runtime thread each (WORKER_THREADS=N to change): several nodes share the
# machine's 2 cores here, as pods would share a node.
# Builds release binaries, starts `roomshard-operator local` on loopback, drives it with
# `roomshard-bench`, prints one JSON line per scenario on stdout, and stops everything.
# Run it on a quiet machine: every line carries `load_1m` so a disturbed run shows.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:-all}"
# ROOMS=N sets the scale-down's room count (default 3000).
# DRIVER_ARGS="..." adds flags to the local driver (e.g. --max-moves-per-node 16).
# BENCH_ARGS="..." adds flags to the scale-down's load (e.g. --on-reconnect close).
# BIN=DIR runs the binaries in DIR (roomshard-operator, roomshard-node, roomshard-bench) without
# building: keep a copy of a build to compare it with another one back to back.
if [ -n "${BIN:-}" ]; then
  bin="$BIN"
else
  cargo build --release --bins >&2
  bin=target/release
fi
work="$(mktemp -d)"
cluster_pid=""
cleanup() {
  if [ -n "$cluster_pid" ]; then kill -TERM "$cluster_pid" 2>/dev/null || true; wait "$cluster_pid" 2>/dev/null || true; fi
  # KEEP_LOGS=DIR keeps the nodes', driver's and bench's logs of the run there.
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp -r "$work"/. "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# start_cluster N: runs the local driver with N nodes; sets $admin.
start_cluster() {
  # REPLICATION=1|2 sets the copies of every room (the driver's default is 2); unset, the
  # flag is not passed, so a build from before it can still be measured with BIN=.
  "$bin/roomshard-operator" local --nodes "$1" --port 0 --log-dir "$work/logs" ${REPLICATION:+--replication "$REPLICATION"} ${DRIVER_ARGS:-} \
    -- --rate-per-sec 1000 --rate-burst 1000 --worker-threads "${WORKER_THREADS:-1}" ${EXTRA_NODE_ARGS:-} >"$work/banner" 2>"$work/driver.log" &
  cluster_pid=$!
  for _ in $(seq 1 300); do
    admin="$(grep -o 'admin:  http://[0-9.:]*' "$work/banner" 2>/dev/null | awk '{print $2}' || true)"
    [ -n "$admin" ] && return 0
    sleep 0.1
  done
  echo "the local cluster did not start; see $work/driver.log" >&2
  exit 1
}

stop_cluster() {
  kill -TERM "$cluster_pid" 2>/dev/null || true
  wait "$cluster_pid" 2>/dev/null || true
  cluster_pid=""
}

# cluster_field EXPR: evaluates a Python expression over the /cluster JSON (`c`).
cluster_field() {
  "$bin/roomshard-operator" status --admin "$admin" --json | python3 -c "import json,sys; c=json.load(sys.stdin); print($1)"
}

nodes_csv() { cluster_field '",".join(n["wsUrl"].removesuffix("/ws") for n in c["nodes"] if n.get("wsUrl") and not n["draining"])'; }
pids_csv() { cluster_field '",".join(str(n["pid"]) for n in c["nodes"] if n.get("pid"))'; }

wait_settled() { # wait_settled REPLICAS TIMEOUT_S
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    if [ "$(cluster_field "c['drain']['phase'] == 'Steady' and c['replicas'] == $1 and len(c['nodes']) == $1 and not c['movesInFlight']")" = True ]; then
      return 0
    fi
    sleep 0.05
  done
  echo "cluster did not settle at $1 replicas within $2 s" >&2
  return 1
}

# RATE=N sets the messages per second per room (default 10: 30,000 deliveries/s; 1: 3,000/s).
# PERF_OUT=FILE also records a 10 s call-graph profile (`perf record -g`) of the first node,
# starting 8 s into the run (read it with `perf report -i FILE --no-children`).
throughput() {
  start_cluster 3
  wait_settled 3 60
  local pids
  pids="$(pids_csv)"
  "$bin/roomshard-bench" --nodes "$(nodes_csv)" --pids "$pids" \
    --rooms 300 --users 10 --rate "${RATE:-10}" --duration 30s --warmup 3s 2>"$work/bench.log" &
  local bench=$!
  if [ -n "${PERF_OUT:-}" ]; then
    sleep 8
    perf record -g -p "${pids%%,*}" -o "$PERF_OUT" -- sleep 10 >/dev/null 2>&1 || echo "perf record failed" >&2
  fi
  wait "$bench"
  stop_cluster
}

idle() {
  start_cluster 3
  wait_settled 3 60
  "$bin/roomshard-bench" --nodes "$(nodes_csv)" --pids "$(pids_csv)" --idle 10000 2>"$work/bench.log"
  stop_cluster
}

scaledown() {
  start_cluster 5
  wait_settled 5 60
  "$bin/roomshard-bench" --nodes "$(nodes_csv)" --rooms "${ROOMS:-3000}" --users 2 --rate 2 \
    --duration 30s --warmup 3s ${BENCH_ARGS:-} >"$work/scaledown.json" 2>"$work/bench.log" &
  local bench=$!
  sleep 13 # 3 s warm-up and 10 s of steady load before the scale-down
  local started
  started=$(date +%s.%N)
  "$bin/roomshard-operator" scale --admin "$admin" --replicas 3 >/dev/null
  wait_settled 3 120
  local drained
  drained=$(python3 -c "print(round($(date +%s.%N) - $started, 3))")
  wait "$bench"
  python3 -c "import json,sys; r=json.load(open('$work/scaledown.json')); r['scenario']='scale-down 5 -> 3, ${ROOMS:-3000} rooms'; r['scale_down_s']=$drained; print(json.dumps(r))"
  stop_cluster
}

# A rolling restart (every node drained, stopped, started again, one at a time) under load,
# then every room's whole history read back (`--audit-history`): rooms keep up to 1000
# messages here, more than one gets in this run, so any cut is a lost hand-off.
restart() {
  EXTRA_NODE_ARGS="--history-per-room 1000" start_cluster 3
  wait_settled 3 60
  "$bin/roomshard-bench" --nodes "$(nodes_csv)" --rooms 3000 --users 2 --rate 2 \
    --duration 45s --warmup 3s --audit-history >"$work/restart.json" 2>"$work/bench.log" &
  local bench=$!
  sleep 13 # 3 s warm-up and 10 s of steady load before the restart
  local started
  started=$(date +%s.%N)
  "$bin/roomshard-operator" restart --admin "$admin" --timeout 5m >"$work/restart.log"
  wait_settled 3 120
  local took
  took=$(python3 -c "print(round($(date +%s.%N) - $started, 3))")
  wait "$bench"
  python3 -c "import json,sys; r=json.load(open('$work/restart.json')); r['scenario']='rolling restart of 3 nodes, 3000 rooms'; r['restart_s']=$took; print(json.dumps(r))"
  stop_cluster
}

# Chaos: kill -9 a random node every 10 s for CHAOS_S seconds (default 300) under load, the
# driver starting each one again; then every room's history read back. Reports acknowledged
# messages missing from history (must be 0), duplicates, the longest time any room went
# without a delivery, and the sends answered `room_unavailable`.
chaos() {
  EXTRA_NODE_ARGS="--history-per-room 100000" start_cluster 3
  wait_settled 3 60
  local seconds="${CHAOS_S:-300}"
  "$bin/roomshard-bench" --nodes "$(nodes_csv)" --rooms 300 --users 4 --rate 2 \
    --duration "$((seconds + 10))s" --warmup 3s --audit-history >"$work/chaos.json" 2>"$work/bench.log" &
  local bench=$!
  sleep 8
  local kills=0 end=$((SECONDS + seconds))
  while [ $SECONDS -lt $end ]; do
    local pids victim
    pids="$(pids_csv | tr ',' ' ')"
    if [ -n "$pids" ]; then
      victim="$(printf '%s\n' $pids | shuf -n 1)"
      kill -9 "$victim" 2>/dev/null && kills=$((kills + 1))
    fi
    sleep 10
  done
  wait "$bench"
  python3 -c "import json; r=json.load(open('$work/chaos.json')); r['scenario']='chaos: kill -9 of a random node every 10 s for $seconds s, 300 rooms'; r['kills']=$kills; print(json.dumps(r))"
  stop_cluster
}

# The floor under throughput's CPU figure: one loopback `send` per delivery, measured alone
# (`send-floor`, no node code) at the same 3,000 sockets and the same two rates.
floor() {
  ulimit -n 20000 2>/dev/null || true # 6,000 sockets: both ends of 3,000 connections
  "$bin/send-floor" --connections 3000 --rate "$((${RATE:-10} * 3000))"
}

case "$scenario" in
  throughput) throughput ;;
  idle) idle ;;
  scaledown) scaledown ;;
  restart) restart ;;
  chaos) chaos ;;
  floor) floor ;;
  all) throughput; idle; scaledown; restart; floor ;;
  *) echo "usage: $0 [throughput|idle|scaledown|restart|chaos|floor|all]" >&2; exit 2 ;;
esac
