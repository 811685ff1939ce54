"""Fixtures: the real app on a real SQLite file in a temporary directory, in process or as a
uvicorn subprocess on a loopback port."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from api.config import Settings
from api.main import create_app
from api.providers.base import ModelProvider
from tests import moto_server
from tests.secrets_check import append_check, record_env_secrets, record_the_suite_s_secrets

# botocore's credential chain would otherwise ask the EC2 metadata address (169.254.169.254)
# from every health check; tests and the servers they start talk to loopback only.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

REPO = Path(__file__).resolve().parent.parent
API_MAIN = [sys.executable, str(REPO / "api" / "main.py")]
BUILD_WORKER = [sys.executable, "-m", "api.cli", "worker"]
T = TypeVar("T")

REQUIREMENT = "Build an agent that triages customer support tickets and answers refund questions"
OTHER_REQUIREMENT = "Create an agent that builds weekly sales reports and forecasts revenue from CSV data"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "log_dir": tmp_path / "logs",
        "offline_stage_delay_seconds": 0.01,
        "build_lease_seconds": 3.0,
        "api_calls_flush_seconds": 0.5,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def wait_until(check: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll `check` (plain, for subprocess and file checks) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return result


async def wait_for(check: Callable[[], Awaitable[T | None]], *, timeout: float = 20.0,
                   interval: float = 0.02, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Api:
    """A thin client that unwraps the success envelope and checks its shape."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.api_requests = 0

    async def call(self, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
        self.api_requests += path.startswith("/api/v1/")
        response = await self.client.request(method, path, **kwargs)
        body = response.json()
        assert response.status_code == expect, (response.status_code, body)
        if expect < 400:
            assert body["success"] is True
            return body["data"]
        assert body["success"] is False
        return body["error"]

    async def create_project(self, requirement: str = REQUIREMENT, **fields: Any) -> dict[str, Any]:
        return await self.call("POST", "/api/v1/projects", expect=201,
                               json={"requirement": requirement, **fields})

    async def project(self, project_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/api/v1/projects/{project_id}")

    async def wait_status(self, project_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            project = await self.project(project_id)
            return project if project["status"] in statuses else None

        return await wait_for(reached, timeout=timeout, what=f"{project_id} to be {statuses}")

    async def built_agent(self, requirement: str = REQUIREMENT) -> dict[str, Any]:
        project = await self.create_project(requirement)
        await self.wait_status(project["project_id"], "completed")
        agents = await self.call("GET", "/api/v1/agents",
                                 params={"project_id": project["project_id"]})
        assert agents["count"] == 1
        return agents["items"][0]


def sse_events(text: str) -> list[tuple[str, Any]]:
    """The (event, data) frames of a Server-Sent Events body; comments (heartbeats) skipped."""
    events = []
    for frame in text.split("\n\n"):
        lines = [line for line in frame.split("\n") if line and not line.startswith(":")]
        if lines:
            fields = dict(line.split(": ", 1) for line in lines)
            events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    # Last of all, whatever was selected: no secret in any log file the run wrote.
    append_check(session, items)


@pytest.fixture(scope="session", autouse=True)
def recorded_secrets() -> Iterator[None]:
    """Every key and SecretStr the run makes is remembered for the last check."""
    with pytest.MonkeyPatch.context() as patch:
        record_the_suite_s_secrets(patch)
        yield


# The API end-to-end tests (tests/e2e) run on every storage backend; the rest of the suite
# runs on the embedded default.
STORAGE_BACKENDS = ("sqlite", "dynamodb")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "storage_backend" in metafunc.fixturenames and metafunc.definition.path.parent.name == "e2e":
        metafunc.parametrize("storage_backend", STORAGE_BACKENDS)


@pytest.fixture
def storage_backend() -> str:
    return "sqlite"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Overridden by test modules that need other settings."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, storage_backend: str, settings_overrides: dict[str, Any],
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    if storage_backend == "dynamodb":
        # The session's moto server, a fresh table prefix, dummy credentials.
        with moto_server.dynamodb_settings(monkeypatch) as overrides:
            yield make_settings(tmp_path, **overrides, **settings_overrides)
    else:
        yield make_settings(tmp_path, **settings_overrides)


@pytest.fixture
def provider() -> ModelProvider | None:
    """Overridden by tests that stand a scripted model in for a hosted provider."""
    return None


@pytest.fixture
async def app(settings: Settings, provider: ModelProvider | None) -> AsyncIterator[Any]:
    application = create_app(settings, provider=provider)
    async with application.router.lifespan_context(application):
        yield application


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Any, Api]]:
    """An app of a test's own, started, with a client on it (settings of its own, or a second
    start on the same data)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield app, Api(client)


@pytest.fixture
async def api(app: Any) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Api(client)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server process on a loopback port (by default `python api/main.py`, as an operator
    runs it); started once /health/ready answers, which is neither counted nor logged."""

    def __init__(self, workdir: Path, env: dict[str, str], command: list[str] = API_MAIN, *,
                 stdout: int | None = None) -> None:
        """`stdout`: a subprocess constant (PIPE) instead of the output file."""
        self.workdir = workdir
        self.command = command
        self.stdout = stdout
        self.port = free_port()
        self.log_dir = workdir / "logs"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "API_HOST": "127.0.0.1",
                    "API_PORT": str(self.port), "WORKER_HOST": "127.0.0.1",
                    "WORKER_PORT": str(self.port), "DATA_DIR": str(workdir / "data"),
                    "LOG_DIR": str(self.log_dir), **env}
        record_env_secrets(self.env)
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.output = workdir / f"server-{self.port}.out"

    def start(self) -> "ServerProcess":
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(self.command, cwd=self.workdir, env=self.env,
                                            stdout=output if self.stdout is None else self.stdout,
                                            stderr=output)
        wait_until(self._ready, timeout=30, what="the server to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"server exited: {self.output.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.base_url}/health/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig`; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def stop(self) -> int:
        """SIGTERM, as an orchestrator stops it; returns the exit status."""
        return self.kill(signal.SIGTERM)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(*, command: list[str] = API_MAIN, **env: str) -> ServerProcess:
        server = ServerProcess(tmp_path, env, command).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
