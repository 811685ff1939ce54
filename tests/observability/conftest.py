"""Helpers for the observability tests: log files, expositions, external tools, real servers."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, free_port, wait_until

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
API_MAIN = [sys.executable, str(REPO / "api" / "main.py")]
FAILING_APP = [sys.executable, "-m", "tests.observability.failing_app"]


def log_entries(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file, each checked to be one JSON object with the guide's fields."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        entry = json.loads(line)
        assert {"timestamp", "level", "logger", "message"} <= entry.keys(), (path, number, line)
        assert TIMESTAMP.fullmatch(entry["timestamp"]), (path, number, line)
        entries.append(entry)
    return entries




def access_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [e for e in log_entries(path) if e["logger"] == "api.access"]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(exposition: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(exposition) for sample in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def tool(name: str, package: str) -> str:
    """An external tool the guide uses: skipped locally when missing, a failure under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed (apt-get install -y {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the host, and no calls to the EC2/ECS metadata endpoints."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


class Server:
    """A real server process on a loopback port; ready once /health/live answers, which is
    neither access-logged nor counted in the metrics."""

    def __init__(self, workdir: Path, command: list[str], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_dir = workdir / "logs"
        self.output = workdir / f"server-{self.port}.out"
        with open(self.output, "wb") as output:
            self.process = subprocess.Popen(
                command, cwd=workdir, stdout=output, stderr=output,
                env={**os.environ, "PYTHONPATH": str(REPO), "API_HOST": "127.0.0.1",
                     "API_PORT": str(self.port), "DATA_DIR": str(workdir / "data"),
                     "LOG_DIR": str(self.log_dir), **env})
        wait_until(self._live, timeout=30, what="the server to answer /health/live")

    def _live(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"server exited: {self.output.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.base_url}/health/live", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> int:
        """SIGTERM, as an orchestrator stops it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*, command: list[str] = API_MAIN, **env: str) -> Server:
        server = Server(tmp_path, command, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)
