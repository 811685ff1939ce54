"""The guide's profiling commands run the server: `python -m cProfile -o profile.stats
api/main.py` and `python -m memory_profiler api/main.py`."""

import os
import pstats
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, wait_until


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("profiler", [["-m", "cProfile", "-o", "profile.stats"], ["-m", "memory_profiler"]],
                         ids=["cProfile", "memory_profiler"])
def test_profilers_run_the_server(tmp_path: Path, profiler: list[str]) -> None:
    port = free_port()
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port),
           "DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs")}
    with open(tmp_path / "console.out", "wb") as console:
        process = subprocess.Popen([sys.executable, *profiler, str(REPO / "api" / "main.py")],
                                   cwd=tmp_path, env=env, stdout=console, stderr=console)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _ready(base_url), timeout=60,
                   what="the profiled server")
        assert process.poll() is None, (tmp_path / "console.out").read_text()[-2000:]
        assert httpx.get(f"{base_url}/api/v1/projects").json()["success"] is True
    finally:
        # Ctrl-C: the profilers write their results on a normal exit (SIGTERM's re-raise skips that).
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    if "cProfile" in profiler:
        stats = pstats.Stats(str(tmp_path / "profile.stats"))
        assert any("list_projects" in function for _, _, function in stats.stats)  # type: ignore[attr-defined]
