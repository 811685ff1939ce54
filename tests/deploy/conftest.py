"""`scripts/deploy.sh` run as an operator runs it, with every path pointed into tmp_path."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

DEPLOY = REPO / "scripts" / "deploy.sh"


class Deployment:
    def __init__(self, tmp_path: Path, environment: str) -> None:
        self.root = tmp_path
        self.port = free_port()
        self.logs = tmp_path / "logs"
        self.pid_file = tmp_path / "api.pid"
        self.multiproc = tmp_path / "prometheus-multiproc"
        self.env = {
            **os.environ, "ENVIRONMENT": environment, "API_PORT": str(self.port),
            "DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(self.logs),
            "PID_FILE": str(self.pid_file), "ENV_FILE": str(tmp_path / ".env"),
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc), "WORKERS": "2",
        }
        self.base_url = f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(DEPLOY), *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout)

    def pid(self) -> int:
        return int(self.pid_file.read_text())


@pytest.fixture(params=["development", "production"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path, request.param)
    yield deployed
    deployed.run("stop")
