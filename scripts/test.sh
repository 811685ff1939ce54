#!/usr/bin/env bash
# Check the import layers (pyproject's [tool.importlinter]), then run the test suite.
# Arguments go to pytest (e.g. scripts/test.sh tests/engine -x).
set -euo pipefail
source "$(dirname "$0")/_venv.sh" test
layers=$(.venv/bin/lint-imports --no-cache) || { echo "$layers"; exit 1; }
exec .venv/bin/python -m pytest "$@"
