#!/usr/bin/env bash
# Run the test suite. Arguments go to pytest (e.g. scripts/test.sh tests/engine -x).
source "$(dirname "$0")/_venv.sh" test
exec .venv/bin/python -m pytest "$@"
