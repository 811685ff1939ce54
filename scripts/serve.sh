#!/usr/bin/env bash
# Start the API on http://localhost:8000 with the embedded defaults (SQLite under ./data,
# offline model provider). Settings come from the environment and .env (see README).
source "$(dirname "$0")/_venv.sh" ""
exec .venv/bin/nexus-ai serve "$@"
