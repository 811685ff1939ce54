#!/usr/bin/env bash
# Run the Nexus-AI Platform API from this checkout: start | stop | restart | status | logs |
# reopen-logs | help. See `scripts/deploy.sh help` and docs/MONITORING.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ENV_FILE=${ENV_FILE:-$ROOT/.env}
PID_FILE=${PID_FILE:-$ROOT/api.pid}
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
Also: PID_FILE (./api.pid), START_TIMEOUT (60), STOP_TIMEOUT (30).
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
  if [ "$ENVIRONMENT" = "production" ]; then
    LOG_FILES=("$LOG_DIR/error.log" "$LOG_DIR/access.log")
  else
    LOG_FILES=("$LOG_DIR/api.log")
  fi
}

pid() { cat "$PID_FILE" 2>/dev/null || true; }

# uvicorn's worker processes, when it runs several (they are multiprocessing spawns).
worker_pids() { pgrep -P "$(pid)" -f spawn_main || true; }

running() {
  local p
  p=$(pid)
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}

# Prints the HTTP status of GET PATH (000 when nothing answers) and the body on stderr.
probe() {
  "$(venv_python)" - "http://$PROBE_HOST:$API_PORT$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
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
  for file in "${LOG_FILES[@]}" "$CONSOLE_FILE"; do
    if [ -s "$file" ]; then
      echo "--- last lines of $file" >&2
      tail -n 20 "$file" >&2
    fi
  done
}

start() {
  if running; then
    echo "Nexus-AI API is already running (pid $(pid))"
    return 0
  fi
  local python workers
  python=$(venv_python)
  mkdir -p "$LOG_DIR"
  if [ "$ENVIRONMENT" = "production" ]; then
    workers=${WORKERS:-$(nproc)}
    # The service empties it at start: files of an earlier run would be summed into its metrics.
    export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$ROOT/prometheus-multiproc}
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  else
    workers=1
  fi
  export ENVIRONMENT
  # The service writes its own log files. Its console only ever carries what precedes logging
  # (an interpreter crash), so it goes to a file that log rotation's *.log leaves alone, and
  # LOG_STDOUT would only copy every line there.
  export LOG_STDOUT=false
  nohup "$python" -m api.cli serve --workers "$workers" >>"$CONSOLE_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  echo "Starting Nexus-AI API ($ENVIRONMENT, $workers worker(s), pid $(pid), port $API_PORT)"

  local deadline=$((SECONDS + START_TIMEOUT)) status
  while [ $SECONDS -lt $deadline ]; do
    if ! running; then
      echo "Nexus-AI API exited during start-up" >&2
      last_lines
      rm -f "$PID_FILE"
      return 1
    fi
    status=$(probe /health/ready 2>/dev/null)
    if [ "$status" = "200" ]; then
      echo "Nexus-AI API is ready on port $API_PORT"
      return 0
    fi
    sleep 0.5
  done
  echo "Nexus-AI API did not become ready within ${START_TIMEOUT}s (last status $status)" >&2
  last_lines
  stop >/dev/null
  return 1
}

stop() {
  if ! running; then
    echo "Nexus-AI API is not running"
    rm -f "$PID_FILE"
    return 0
  fi
  local p
  p=$(pid)
  kill -TERM "$p"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
    sleep 0.2
  done
  if kill -0 "$p" 2>/dev/null; then
    echo "Nexus-AI API did not stop within ${STOP_TIMEOUT}s; sending SIGKILL" >&2
    pkill -KILL -P "$p" 2>/dev/null || true
    kill -KILL "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$PID_FILE"
  echo "Nexus-AI API stopped (pid $p)"
}

status() {
  if ! running; then
    echo "Nexus-AI API is not running"
    return 3
  fi
  local p uptime ready
  p=$(pid)
  uptime=$(ps -o etimes= -p "$p" | tr -d ' ')
  echo "pid:     $p"
  echo "uptime:  ${uptime}s"
  echo "workers: $(worker_pids | wc -w | sed 's/^0$/1 (in the main process)/')"
  ready=$(probe /health/ready 2>/dev/null)
  echo "ready:   $ready (GET /health/ready)"
  echo "health:  $(probe /health/detailed 2>&1 >/dev/null)"
  [ "$ready" = "200" ] && return 0 || return 1
}

logs() {
  mkdir -p "$LOG_DIR"
  touch "${LOG_FILES[@]}"
  # -F follows a file across rotation.
  exec tail -n "${LINES:-50}" -F "${LOG_FILES[@]}"
}

reopen_logs() {
  if ! running; then
    echo "Nexus-AI API is not running"
    return 0
  fi
  local p workers
  p=$(pid)
  # With several workers the pid file names uvicorn's supervisor, for which SIGHUP means
  # "restart the workers"; the workers are the ones to tell (the supervisor's own log
  # handler notices the moved file by itself).
  workers=$(worker_pids | tr '\n' ' ')
  kill -HUP ${workers:-$p}
  echo "Asked pid(s) ${workers:-$p} to reopen their log files"
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
