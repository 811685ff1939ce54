"""`scripts/deploy.sh` run as an operator runs it, with every path pointed into tmp_path."""

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.secrets_check import record_env_secrets, record_secret

DEPLOY = REPO / "scripts" / "deploy.sh"


def free_consecutive_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports (BUILD_WORKERS' WORKER_PORT, +1, ...)."""
    for _ in range(100):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports")


class Deployment:
    # Enough consecutive ports for the tests' BUILD_WORKERS.
    MAX_BUILD_WORKERS = 2

    def __init__(self, tmp_path: Path, environment: str) -> None:
        self.root = tmp_path
        self.port = free_port()
        self.worker_port = free_consecutive_ports(self.MAX_BUILD_WORKERS)
        self.logs = tmp_path / "logs"
        self.pid_file = tmp_path / "api.pid"
        self.worker_pid_file = tmp_path / "worker.pid"
        self.multiproc = tmp_path / "prometheus-multiproc"
        self.env = {
            **os.environ, "ENVIRONMENT": environment, "API_PORT": str(self.port),
            "DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(self.logs),
            "PID_FILE": str(self.pid_file), "ENV_FILE": str(tmp_path / ".env"),
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc), "WORKERS": "2",
            # Build workers (BUILD_WORKERS, off unless a test sets it) listen on loopback only.
            "WORKER_HOST": "127.0.0.1", "WORKER_PORT": str(self.worker_port),
            "WORKER_PID_FILE": str(self.worker_pid_file), "BUILD_WORKERS": "0",
        }
        self.base_url = f"http://127.0.0.1:{self.port}"
        # Production requires keys (AUTH_MODE=api_key): a tenant admin's for the API, and the
        # OPERATOR_TOKEN that deploy.sh's status probes and the /metrics reads send.
        self.headers: dict[str, str] = {}
        self.operator_headers: dict[str, str] = {}
        if environment == "production":
            self.env["OPERATOR_TOKEN"] = secrets.token_urlsafe(32)
            created = subprocess.run([sys.executable, "-m", "api.cli", "keys", "create", "--tenant",
                                      "default", "--role", "admin", "--name", "deploy-test"],
                                     env={k: v for k, v in self.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
                                     cwd=REPO, capture_output=True, text=True, check=True)
            record_secret(created.stdout.strip())
            record_env_secrets(self.env)
            self.headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
            self.operator_headers = {"Authorization": f"Bearer {self.env['OPERATOR_TOKEN']}"}

    def worker_url(self, number: int) -> str:
        """Build worker `number` (1, 2, ...) of BUILD_WORKERS."""
        return f"http://127.0.0.1:{self.worker_port + number - 1}"

    def run(self, *args: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(DEPLOY), *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout)

    def pid(self) -> int:
        return int(self.pid_file.read_text())

    def worker_pids(self) -> list[int]:
        return [int(line) for line in self.worker_pid_file.read_text().split()]


@pytest.fixture(params=["development", "production"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path, request.param)
    yield deployed
    deployed.run("stop")
