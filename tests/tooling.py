"""External tools the tests drive (Debian's prometheus, logrotate, ...): a missing one skips
its tests on a developer's machine and fails them in CI (CI=true), which must install it."""

import os
import shutil
import subprocess
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


MODEL_SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "model-server.sh"
MODEL_SERVER_INSTALL = "scripts/model-server.sh install"


def require_model_server() -> None:
    """llama-server and its model, as scripts/model-server.sh installs them (docs/MODELS.md)."""
    where = subprocess.run(["bash", str(MODEL_SERVER_SCRIPT), "where"], capture_output=True,
                           text=True, check=True).stdout.strip()
    if not (Path(where) / ".installed").exists():
        missing(f"llama-server in {where}", MODEL_SERVER_INSTALL)


def stop_process(process: "subprocess.Popen[bytes] | None") -> None:
    """SIGTERM a helper server still running, SIGKILL it if it does not stop within 10 s."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
