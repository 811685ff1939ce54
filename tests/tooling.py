"""External tools the tests drive (Debian's prometheus, logrotate, ...): a missing one skips
its tests on a developer's machine and fails them in CI (CI=true), which must install it."""

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest


def missing(what: str, install: str) -> NoReturn:
    message = f"{what} is not installed ({install})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must install it")
    pytest.skip(message)


def tool(name: str, install: str) -> str:
    # Tools installed with pip land next to the interpreter, which may not be on PATH.
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        missing(name, install)
    return path
