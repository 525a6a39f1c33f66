#!/usr/bin/env bash
# A Spark standalone cluster on 127.0.0.1 from the pip-installed pyspark: one master and N workers.
#
#   scripts/standalone_cluster.sh start  [--workers 2]   start (or reuse) and wait until every worker is registered
#   scripts/standalone_cluster.sh status [--workers 2]   daemons and registered workers; exit 0 only if all are up
#   scripts/standalone_cluster.sh stop                    TERM the daemons this script started (KILL after 20 s)
#
# State (pid files, daemon logs, worker work dirs) lives in $CVR_CLUSTER_DIR (default ./data/cluster).
# Environment: CVR_MASTER_PORT (7077), CVR_MASTER_UI_PORT (8080), CVR_WORKER_UI_PORT (8081, +1 per worker),
# CVR_WORKER_CORES (1), CVR_WORKER_MEMORY (2g), CVR_CLUSTER_TIMEOUT (240 s to wait for registration),
# CVR_VENV (./.venv: its python runs the executors and its spark-class the daemons).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${CVR_CLUSTER_DIR:-$ROOT/data/cluster}"
VENV="${CVR_VENV:-$ROOT/.venv}"
HOST=127.0.0.1
MASTER_PORT="${CVR_MASTER_PORT:-7077}"
MASTER_UI_PORT="${CVR_MASTER_UI_PORT:-8080}"
WORKER_UI_PORT="${CVR_WORKER_UI_PORT:-8081}"
WORKER_CORES="${CVR_WORKER_CORES:-1}"
WORKER_MEMORY="${CVR_WORKER_MEMORY:-2g}"
TIMEOUT="${CVR_CLUSTER_TIMEOUT:-240}"
MASTER_URL="spark://$HOST:$MASTER_PORT"
MASTER_JSON="http://$HOST:$MASTER_UI_PORT/json/"

usage() {
  echo "usage: $0 start|stop|status [--workers N]" >&2
  exit 2
}

log() { echo "[cluster $(date -u +%H:%M:%S)] $*" >&2; }

ACTION="${1:-}"
[ -n "$ACTION" ] || usage
shift
WORKERS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS="${2:?--workers needs a number}"; shift 2 ;;
    --workers=*) WORKERS="${1#*=}"; shift ;;
    *) usage ;;
  esac
done
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --workers expects a positive integer, got '$WORKERS'" >&2; exit 2; }

# The pid in $1 is alive and is still the Spark daemon of class $2 (pids get reused).
daemon_alive() {
  local pid_file="$1" class="$2" pid
  [ -f "$pid_file" ] || return 1
  pid="$(cat "$pid_file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$class"
}

# Number of ALIVE workers the master reports (0 if the master does not answer).
alive_workers() {
  curl -fsS --max-time 3 "$MASTER_JSON" 2>/dev/null |
    "$VENV/bin/python" -c 'import json,sys; print(sum(w.get("state")=="ALIVE" for w in json.load(sys.stdin).get("workers",[])))' 2>/dev/null ||
    echo 0
}

launch() {  # launch NAME CLASS ARGS...: run a daemon in the background, pid and log in $STATE
  local name="$1"; shift
  local class="$1"
  nohup env SPARK_LOCAL_IP="$HOST" SPARK_LOG_DIR="$STATE/logs" PYSPARK_PYTHON="$VENV/bin/python" \
    "$VENV/bin/spark-class" "$@" >"$STATE/logs/$name.out" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
  log "started $name (pid $!, class $class), log $STATE/logs/$name.out"
}

start() {
  [ -x "$VENV/bin/spark-class" ] || { echo "error: $VENV/bin/spark-class not found (is pyspark installed in the venv?)" >&2; exit 3; }
  command -v java >/dev/null || { echo "error: java not on PATH (Spark needs Java 17)" >&2; exit 3; }
  mkdir -p "$STATE/logs"
  if daemon_alive "$STATE/master.pid" deploy.master.Master; then
    log "master already running (pid $(cat "$STATE/master.pid"))"
  else
    launch master org.apache.spark.deploy.master.Master \
      --host "$HOST" --port "$MASTER_PORT" --webui-port "$MASTER_UI_PORT"
  fi
  for i in $(seq 1 "$WORKERS"); do
    if daemon_alive "$STATE/worker-$i.pid" deploy.worker.Worker; then
      log "worker-$i already running (pid $(cat "$STATE/worker-$i.pid"))"
      continue
    fi
    mkdir -p "$STATE/work-$i"
    launch "worker-$i" org.apache.spark.deploy.worker.Worker "$MASTER_URL" \
      --host "$HOST" --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" \
      --webui-port "$((WORKER_UI_PORT + i - 1))" --work-dir "$STATE/work-$i"
  done
  local waited=0 alive
  while :; do
    alive="$(alive_workers)"
    [ "$alive" -ge "$WORKERS" ] && break
    if [ "$waited" -ge "$TIMEOUT" ]; then
      echo "error: only $alive of $WORKERS workers registered with $MASTER_URL after ${TIMEOUT}s; see $STATE/logs" >&2
      exit 4
    fi
    if ! daemon_alive "$STATE/master.pid" deploy.master.Master; then
      echo "error: the master exited; see $STATE/logs/master.out" >&2
      tail -n 20 "$STATE/logs/master.out" >&2 || true
      exit 4
    fi
    sleep 2
    waited=$((waited + 2))
  done
  log "cluster ready: $MASTER_URL with $alive workers (UI http://$HOST:$MASTER_UI_PORT)"
  echo "$MASTER_URL"
}

stop_one() {  # TERM, wait, then KILL one daemon we started
  local name="$1" class="$2" pid_file="$STATE/$1.pid" pid
  [ -f "$pid_file" ] || return 0
  pid="$(cat "$pid_file")"
  if daemon_alive "$pid_file" "$class"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pid_file"
}

stop() {
  local f name
  for f in "$STATE"/worker-*.pid; do
    [ -e "$f" ] || continue
    name="$(basename "$f" .pid)"
    stop_one "$name" deploy.worker.Worker
  done
  stop_one master deploy.master.Master
}

status() {
  local ok=0 f
  if daemon_alive "$STATE/master.pid" deploy.master.Master; then
    echo "master   running pid $(cat "$STATE/master.pid")  $MASTER_URL"
  else
    echo "master   not running"; ok=1
  fi
  for i in $(seq 1 "$WORKERS"); do
    f="$STATE/worker-$i.pid"
    if daemon_alive "$f" deploy.worker.Worker; then
      echo "worker-$i running pid $(cat "$f")"
    else
      echo "worker-$i not running"; ok=1
    fi
  done
  local alive
  alive="$(alive_workers)"
  echo "registered workers: $alive (want $WORKERS)"
  [ "$alive" -ge "$WORKERS" ] || ok=1
  return $ok
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
