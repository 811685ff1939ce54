"""A stdout pipe nobody reads (a blocked container log driver) under a minute of load: the
files keep every line, the process does not grow, the lines stdout cannot take are dropped and
counted, and the service still shuts down cleanly."""

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess, wait_until

LOAD_SECONDS = 60.0
MAX_REQUESTS = 250_000  # a bound on the disk the minute takes (~320 bytes a line)
CLIENTS = 4
DROPPED = re.compile(r'^log_lines_dropped_total\{sink="stdout"\} (\S+)$', re.MULTILINE)


class StalledServer(ServerProcess):
    """The service with LOG_STDOUT=true in production mode, its stdout a pipe left unread."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, {"ENVIRONMENT": "production", "AUTH_MODE": "none", "LOG_STDOUT": "true"},
                         stdout=subprocess.PIPE)

    def dropped(self) -> float:
        found = DROPPED.search(httpx.get(f"{self.base_url}/metrics", timeout=10).text)
        return float(found.group(1)) if found else 0.0

    def rss_mb(self) -> float:
        assert self.process is not None
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def access_lines(self) -> int:
        with open(self.log_dir / "access.log", "rb") as log:
            return sum(1 for line in log if b'"path": "/api/v1/projects", ' in line)

    def error_lines(self, text: str) -> list[str]:
        return [line for line in (self.log_dir / "error.log").read_text().splitlines() if text in line]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StalledServer]:
    server = StalledServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()


def _load(base_url: str, deadline: float, budget: list[int], lock: threading.Lock) -> int:
    sent = 0
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            assert client.get("/api/v1/projects").status_code == 200
            sent += 1
    return sent


def test_a_stdout_nobody_reads_stalls_no_file_and_no_memory(server: StalledServer) -> None:
    deadline = time.monotonic() + LOAD_SECONDS
    budget, lock = [MAX_REQUESTS], threading.Lock()
    with ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(_load, server.base_url, deadline, budget, lock) for _ in range(CLIENTS)]
        # Dropping starts once the pipe and the stdout queue (10,000 lines) are full; from
        # then on the process must stay the size it is.
        wait_until(lambda: server.dropped() > 0, timeout=LOAD_SECONDS, interval=0.5,
                   what="stdout to start dropping lines")
        rss_when_dropping = server.rss_mb()
        sent = sum(future.result() for future in clients)
    rss_after = server.rss_mb()

    assert sent >= 15_000, sent  # enough to fill the pipe and the queue well past the limit
    # The file kept every request's line, while stdout took none of the recent ones.
    wait_until(lambda: server.access_lines() == sent, timeout=30, what="access.log to hold every line")
    dropped = server.dropped()
    assert dropped >= sent - 10_000 - 1_000, (dropped, sent)
    assert rss_after - rss_when_dropping < 10, (rss_when_dropping, rss_after)
    started = server.error_lines("Log sink stdout is full: dropping lines")
    assert len(started) == 1 and '"level": "WARNING"' in started[0], started
    assert server.error_lines("Log sink stdout takes lines again") == []

    # Someone reads stdout again: it catches up, and says how many lines it lost.
    assert server.process is not None and server.process.stdout is not None
    threading.Thread(target=server.process.stdout.read, daemon=True).start()

    def recovered() -> list[str]:
        httpx.get(f"{server.base_url}/api/v1/projects", timeout=10)
        return server.error_lines("Log sink stdout takes lines again")

    [notice] = wait_until(recovered, timeout=30, interval=0.2, what="stdout to take lines again")
    assert f'"dropped_lines": {int(server.dropped())}' in notice, notice

    # And the service still stops on SIGTERM, its last lines written.
    assert server.stop() == -signal.SIGTERM  # uvicorn re-raises it
    assert server.error_lines("Nexus-AI Platform API stopped")
