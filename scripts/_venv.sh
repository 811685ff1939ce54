# Sourced by the set-up scripts: a project virtual environment with the package installed,
# with the optional dependency group named by $1 (if any).
# PYTHON picks the interpreter (default python3, which must be 3.11 or newer).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${1:+[$1]}"
