#!/usr/bin/env bash
# Run the Nexus-AI Platform API from this checkout, and its build workers when BUILD_WORKERS
# is set: start | stop | restart | status | logs | reopen-logs | help. See
# `scripts/deploy.sh help` and docs/MONITORING.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ENV_FILE=${ENV_FILE:-$ROOT/.env}
PID_FILE=${PID_FILE:-$ROOT/api.pid}
WORKER_PID_FILE=${WORKER_PID_FILE:-$ROOT/worker.pid}
START_TIMEOUT=${START_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

usage() {
  cat <<'TXT'
Usage: scripts/deploy.sh COMMAND

  start        start the API in the background; waits until /health/ready answers 200
  stop         graceful stop: SIGTERM, wait up to STOP_TIMEOUT seconds, then SIGKILL
  restart      stop, then start
  status       pid, uptime and readiness; exit 0 running and ready, 1 running but not
               ready, 3 not running
  logs         follow the log files (development: logs/api.log; production:
               logs/error.log and logs/access.log)
  reopen-logs  make the running service reopen its log files (logrotate's postrotate)
  help         this text

Settings come from the environment and from .env (ENV_FILE), which is read as data, never
executed. ENVIRONMENT=development runs one process; ENVIRONMENT=production runs WORKERS
processes (default: one per CPU) with multiprocess Prometheus metrics in
PROMETHEUS_MULTIPROC_DIR (default ./prometheus-multiproc, emptied at every start).
Also: PID_FILE (./api.pid), START_TIMEOUT (60), STOP_TIMEOUT (30). Production requires API
keys (AUTH_MODE=api_key): status sends OPERATOR_TOKEN, when set, to /health/detailed and
/metrics (docs/SECURITY.md).

Build workers: BUILD_WORKERS=N (default 0: the API runs the builds itself) makes start also
start N `nexus-ai worker` processes, on ports WORKER_PORT (8001), WORKER_PORT+1, ..., and
wait until each one's /health/ready answers 200; the API then runs with RUN_BUILDS=false
(unless RUN_BUILDS is set). Each worker is one process with its metrics in memory
(PROMETHEUS_MULTIPROC_DIR is unset for it), writes the API's log files, and its console goes
to logs/worker-console.out; their pids are in WORKER_PID_FILE (./worker.pid, one a line).
stop, restart, status (one line per worker) and reopen-logs cover the workers as well.
TXT
}

venv_python() {
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    bash -c "source '$ROOT/scripts/_venv.sh' ''" >&2
  fi
  echo "$ROOT/.venv/bin/python"
}

load_env() {
  # python-dotenv (installed with the service) parses .env exactly as the service does:
  # quotes, spaces and '#' in values stay data. Variables already set win, as in the service.
  [ -f "$ENV_FILE" ] || return 0
  local exports
  exports=$("$(venv_python)" - "$ENV_FILE" <<'PY'
import os, re, shlex, sys
from dotenv import dotenv_values
for key, value in dotenv_values(sys.argv[1]).items():
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) and value is not None and key not in os.environ:
        print(f"export {key}={shlex.quote(value)}")
PY
)
  eval "$exports"
}

settings() {
  ENVIRONMENT=$(echo "${ENVIRONMENT:-development}" | tr '[:upper:]' '[:lower:]')
  LOG_DIR=${LOG_DIR:-./logs}
  API_PORT=${API_PORT:-8000}
  PROBE_HOST=${PROBE_HOST:-127.0.0.1}
  CONSOLE_FILE=$LOG_DIR/console.out
  BUILD_WORKERS=${BUILD_WORKERS:-0}
  WORKER_PORT=${WORKER_PORT:-8001}
  WORKER_CONSOLE_FILE=$LOG_DIR/worker-console.out
  case "$BUILD_WORKERS" in
    '' | *[!0-9]*)
      echo "BUILD_WORKERS must be a number of worker processes (0: none), not '$BUILD_WORKERS'" >&2
      exit 2
      ;;
  esac
  if [ "$ENVIRONMENT" = "production" ]; then
    LOG_FILES=("$LOG_DIR/error.log" "$LOG_DIR/access.log")
  else
    LOG_FILES=("$LOG_DIR/api.log")
  fi
}

pid() { cat "$PID_FILE" 2>/dev/null || true; }

# uvicorn's worker processes, when it runs several (they are multiprocessing spawns).
worker_pids() { pgrep -P "$(pid)" -f spawn_main || true; }

alive() { [ -n "$1" ] && [ "$1" != "-" ] && kill -0 "$1" 2>/dev/null; }

running() { alive "$(pid)"; }

# The build workers' pids, one a line: line i is the worker on port WORKER_PORT+i-1 ("-" for
# one that is not running).
read_build_workers() {
  BUILD_WORKER_PIDS=()
  if [ -f "$WORKER_PID_FILE" ]; then
    mapfile -t BUILD_WORKER_PIDS <"$WORKER_PID_FILE"
  fi
}

write_build_workers() {
  local p
  for p in "${BUILD_WORKER_PIDS[@]}"; do
    if alive "$p"; then
      printf '%s\n' "${BUILD_WORKER_PIDS[@]}" >"$WORKER_PID_FILE"
      return 0
    fi
  done
  rm -f "$WORKER_PID_FILE"
}

# Prints the HTTP status of GET PATH on PORT (default API_PORT; 000 when nothing answers) and
# the body on stderr. With OPERATOR_TOKEN set (environment or .env) it is sent: /health/detailed
# and /metrics need it when the service requires API keys (docs/SECURITY.md).
probe() {
  "$(venv_python)" - "http://$PROBE_HOST:${2:-$API_PORT}$1" <<'PY'
import os, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ.get("OPERATOR_TOKEN"):
    request.add_header("Authorization", f"Bearer {os.environ['OPERATOR_TOKEN']}")
try:
    with urllib.request.urlopen(request, timeout=2) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
except OSError:
    status, body = 0, b""
print(f"{status:03d}")
sys.stderr.write(body.decode(errors="replace"))
PY
}

last_lines() {
  for file in "${LOG_FILES[@]}" "$@"; do
    if [ -s "$file" ]; then
      echo "--- last lines of $file" >&2
      tail -n 20 "$file" >&2
    fi
  done
}

# wait_ready NAME PID PORT: returns 0 once GET /health/ready on PORT answers 200, 2 when the
# process exits first, 1 when START_TIMEOUT passes (the process still running).
wait_ready() {
  local name=$1 p=$2 port=$3 deadline=$((SECONDS + START_TIMEOUT)) status=000
  while [ $SECONDS -lt $deadline ]; do
    if ! alive "$p"; then
      echo "$name exited during start-up" >&2
      return 2
    fi
    status=$(probe /health/ready "$port" 2>/dev/null)
    if [ "$status" = "200" ]; then
      return 0
    fi
    sleep 0.5
  done
  echo "$name did not become ready within ${START_TIMEOUT}s (last status $status)" >&2
  return 1
}

# terminate NAME PID [NAME PID ...]: SIGTERM to each, one STOP_TIMEOUT for all of them, then
# SIGKILL (to their children too) for those still there. Prints "NAME stopped (pid PID)".
terminate() {
  local names=() pids=() i left deadline
  while [ $# -gt 0 ]; do
    names+=("$1")
    pids+=("$2")
    shift 2
  done
  for i in "${!pids[@]}"; do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + STOP_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    left=0
    for i in "${!pids[@]}"; do
      if kill -0 "${pids[i]}" 2>/dev/null; then left=1; fi
    done
    [ $left -eq 1 ] || break
    sleep 0.2
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      echo "${names[i]} did not stop within ${STOP_TIMEOUT}s; sending SIGKILL" >&2
      pkill -KILL -P "${pids[i]}" 2>/dev/null || true
      kill -KILL "${pids[i]}" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  for i in "${!pids[@]}"; do
    echo "${names[i]} stopped (pid ${pids[i]})"
  done
}

start() {
  export ENVIRONMENT
  # The service writes its own log files. Its console only ever carries what precedes logging
  # (an interpreter crash), so it goes to a file that log rotation's *.log leaves alone, and
  # LOG_STDOUT would only copy every line there.
  export LOG_STDOUT=false
  mkdir -p "$LOG_DIR"
  if running; then
    echo "Nexus-AI API is already running (pid $(pid))"
  else
    start_api || return 1
  fi
  start_build_workers
}

start_api() {
  local python workers api_env=()
  python=$(venv_python)
  if [ "$ENVIRONMENT" = "production" ]; then
    workers=${WORKERS:-$(nproc)}
    # The service empties it at start: files of an earlier run would be summed into its metrics.
    export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$ROOT/prometheus-multiproc}
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  else
    workers=1
  fi
  # With build workers the API only serves (unless RUN_BUILDS says otherwise).
  if [ "$BUILD_WORKERS" -gt 0 ] && [ -z "${RUN_BUILDS:-}" ]; then
    api_env=(RUN_BUILDS=false)
  fi
  nohup env "${api_env[@]}" "$python" -m api.cli serve --workers "$workers" >>"$CONSOLE_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  echo "Starting Nexus-AI API ($ENVIRONMENT, $workers worker(s), pid $(pid), port $API_PORT)"

  local waited=0
  wait_ready "Nexus-AI API" "$(pid)" "$API_PORT" || waited=$?
  case $waited in
    0)
      echo "Nexus-AI API is ready on port $API_PORT"
      return 0
      ;;
    2)
      last_lines "$CONSOLE_FILE"
      rm -f "$PID_FILE"
      ;;
    *)
      last_lines "$CONSOLE_FILE"
      terminate "Nexus-AI API" "$(pid)" >/dev/null
      rm -f "$PID_FILE"
      ;;
  esac
  return 1
}

start_build_workers() {
  [ "$BUILD_WORKERS" -gt 0 ] || return 0
  local python i port p started=() failed=0 waited
  python=$(venv_python)
  read_build_workers
  for ((i = 0; i < BUILD_WORKERS; i++)); do
    port=$((WORKER_PORT + i))
    p=${BUILD_WORKER_PIDS[i]:-}
    if alive "$p"; then
      echo "Nexus-AI build worker $((i + 1)) is already running (pid $p, port $port)"
      continue
    fi
    # A worker is one process and keeps its metrics in memory: it refuses to start with the
    # API's multiprocess directory in its environment.
    nohup env -u PROMETHEUS_MULTIPROC_DIR -u prometheus_multiproc_dir \
      "$python" -m api.cli worker --port "$port" >>"$WORKER_CONSOLE_FILE" 2>&1 &
    BUILD_WORKER_PIDS[i]=$!
    started+=("$i")
    echo "Starting Nexus-AI build worker $((i + 1)) (pid $!, port $port)"
  done
  # Slots of workers no longer running (also beyond BUILD_WORKERS, from a larger start): "-".
  for i in "${!BUILD_WORKER_PIDS[@]}"; do
    alive "${BUILD_WORKER_PIDS[i]}" || BUILD_WORKER_PIDS[i]=-
  done
  write_build_workers
  for i in "${started[@]}"; do
    port=$((WORKER_PORT + i))
    p=${BUILD_WORKER_PIDS[i]}
    waited=0
    wait_ready "Nexus-AI build worker $((i + 1))" "$p" "$port" || waited=$?
    if [ $waited -eq 0 ]; then
      echo "Nexus-AI build worker $((i + 1)) is ready on port $port"
      continue
    fi
    failed=1
    [ $waited -eq 2 ] || terminate "Nexus-AI build worker $((i + 1))" "$p" >/dev/null
    BUILD_WORKER_PIDS[i]=-
  done
  write_build_workers
  if [ $failed -ne 0 ]; then
    last_lines "$WORKER_CONSOLE_FILE"
    echo "Builds wait in the store until a build worker runs: fix the cause, then run start again" >&2
    return 1
  fi
}

stop() {
  local targets=() i
  if running; then
    targets+=("Nexus-AI API" "$(pid)")
  else
    echo "Nexus-AI API is not running"
  fi
  read_build_workers
  for i in "${!BUILD_WORKER_PIDS[@]}"; do
    if alive "${BUILD_WORKER_PIDS[i]}"; then
      targets+=("Nexus-AI build worker $((i + 1))" "${BUILD_WORKER_PIDS[i]}")
    fi
  done
  # All at once: each drains on its own (the workers hand their running builds back).
  [ ${#targets[@]} -eq 0 ] || terminate "${targets[@]}"
  rm -f "$PID_FILE" "$WORKER_PID_FILE"
}

status() {
  local code=0 p uptime ready
  if ! running; then
    echo "Nexus-AI API is not running"
    code=3
  else
    p=$(pid)
    uptime=$(ps -o etimes= -p "$p" | tr -d ' ')
    echo "pid:     $p"
    echo "uptime:  ${uptime}s"
    echo "workers: $(worker_pids | wc -w | sed 's/^0$/1 (in the main process)/')"
    ready=$(probe /health/ready 2>/dev/null)
    echo "ready:   $ready (GET /health/ready)"
    echo "health:  $(probe /health/detailed 2>&1 >/dev/null)"
    [ "$ready" = "200" ] || code=1
  fi
  build_workers_status || { [ $code -ne 0 ] || code=1; }
  return $code
}

# One line per build worker (those started, and those BUILD_WORKERS asks for); 1 when one of
# them is not running or not ready.
build_workers_status() {
  local i count port p uptime ready active code=0
  read_build_workers
  count=${#BUILD_WORKER_PIDS[@]}
  [ "$BUILD_WORKERS" -le "$count" ] || count=$BUILD_WORKERS
  for ((i = 0; i < count; i++)); do
    port=$((WORKER_PORT + i))
    p=${BUILD_WORKER_PIDS[i]:-}
    if ! alive "$p"; then
      echo "build worker $((i + 1)): not running (port $port)"
      code=1
      continue
    fi
    uptime=$(ps -o etimes= -p "$p" | tr -d ' ')
    ready=$(probe /health/ready "$port" 2>/dev/null)
    active=$(probe /metrics "$port" 2>&1 >/dev/null | awk '$1 == "builds_active" { printf "%d", $2 }')
    echo "build worker $((i + 1)): pid $p, port $port, uptime ${uptime}s," \
      "ready $ready (GET /health/ready), builds running ${active:-?}"
    [ "$ready" = "200" ] || code=1
  done
  return $code
}

logs() {
  mkdir -p "$LOG_DIR"
  touch "${LOG_FILES[@]}"
  # -F follows a file across rotation.
  exec tail -n "${LINES:-50}" -F "${LOG_FILES[@]}"
}

reopen_logs() {
  local p workers targets=() i
  if running; then
    p=$(pid)
    # With several workers the pid file names uvicorn's supervisor, for which SIGHUP means
    # "restart the workers"; the workers are the ones to tell (the supervisor's own log
    # handler notices the moved file by itself).
    workers=$(worker_pids | tr '\n' ' ')
    read -r -a targets <<<"${workers:-$p}"
  else
    echo "Nexus-AI API is not running"
  fi
  # A build worker is one process: it reopens its files on SIGHUP itself.
  read_build_workers
  for i in "${!BUILD_WORKER_PIDS[@]}"; do
    if alive "${BUILD_WORKER_PIDS[i]}"; then targets+=("${BUILD_WORKER_PIDS[i]}"); fi
  done
  [ ${#targets[@]} -gt 0 ] || return 0
  kill -HUP "${targets[@]}"
  echo "Asked pid(s) ${targets[*]} to reopen their log files"
}

command=${1:-help}
case "$command" in
  start | stop | restart | status | logs | reopen-logs)
    load_env
    settings
    ;;
esac
case "$command" in
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status) status ;;
  logs) logs ;;
  reopen-logs) reopen_logs ;;
  help | -h | --help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
