#!/usr/bin/env bash
# Start the API on http://localhost:8000 with the embedded defaults (SQLite under ./data,
# offline model provider). Settings come from the environment and .env (see README).
source "$(dirname "$0")/_venv.sh" ""
echo "Nexus-AI Platform API on http://localhost:${API_PORT:-8000} (Ctrl-C stops it); logs go to ${LOG_DIR:-./logs} (docs/MONITORING.md)" >&2
# The pid file deploy.sh and the operator's guide (`top -p $(cat api.pid)`) read: exec keeps
# this shell's pid for the server.
echo $$ >"${PID_FILE:-api.pid}"
exec .venv/bin/nexus-ai serve "$@"
