"""The real model server these tests talk to: llama.cpp's llama-server with SmolLM2-135M-Instruct
(docs/MODELS.md), on a loopback port for the whole session.

`MODEL_SERVER_URL` (e.g. `http://127.0.0.1:8081/v1`) names a server someone started on this
machine; otherwise the fixture runs `scripts/model-server.sh run PORT` itself, so the install
directory, the model file and the server's flags are written down once, in that script.
"""

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.conftest import REPO, free_port, wait_until
from tests.tooling import require_model_server

SCRIPT = REPO / "scripts" / "model-server.sh"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
# A connection the server has not closed yet: the peer's end may already be closed (CLOSE_WAIT).
OPEN_STATES = (psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT)

Connection = tuple[tuple[str, int], tuple[str, int]]


@dataclass(frozen=True)
class ModelServer:
    base_url: str  # ends in /v1
    model: str  # the id /v1/models reports
    pid: int

    def open_connections(self) -> set[Connection]:
        """The server's client connections it has not closed (blocking: psutil reads /proc)."""
        return {(tuple(conn.laddr), tuple(conn.raddr))
                for conn in psutil.Process(self.pid).net_connections(kind="tcp")
                if conn.status in OPEN_STATES and conn.raddr}


async def slots_busy(server: ModelServer) -> int:
    """How many of the server's slots are generating (llama-server's /slots)."""
    root = server.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{root}/slots")
    response.raise_for_status()
    return sum(1 for slot in response.json() if slot["is_processing"])


async def slots_generating(server: ModelServer) -> int:
    """How many of the server's slots are past the prompt, generating: llama-server notices a
    closed stream at its next token, and cannot during the prompt's evaluation."""
    root = server.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{root}/slots")
    response.raise_for_status()
    return sum(1 for slot in response.json()
               if slot["is_processing"] and slot["next_token"][0]["n_decoded"] > 0)


def _model_id(base_url: str) -> str:
    response = httpx.get(f"{base_url}/models", timeout=5)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def _listening_pid(base_url: str) -> int:
    port = urlsplit(base_url).port
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    pytest.fail(f"MODEL_SERVER_URL={base_url}: no process of this machine listens on port {port} "
                "(the tests count the server's connections, so it must run here)")


def _serving(process: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    if process.poll() is not None:
        output = log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"llama-server exited with status {process.returncode}: {output}")
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    if external := os.environ.get("MODEL_SERVER_URL"):
        base_url = external.rstrip("/")
        yield ModelServer(base_url=base_url, model=_model_id(base_url), pid=_listening_pid(base_url))
        return
    require_model_server()
    port = free_port()
    # A file, not a pipe: a pipe nobody reads would fill and stall the server.
    log = tmp_path_factory.mktemp("model-server") / "llama-server.log"
    with log.open("wb") as output:
        process = subprocess.Popen([str(SCRIPT), "run", str(port)], stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _serving(process, port, log), timeout=START_TIMEOUT_SECONDS,
                   interval=0.1, what="llama-server to serve")
        base_url = f"http://127.0.0.1:{port}/v1"
        yield ModelServer(base_url=base_url, model=_model_id(base_url), pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
