"""MAX_CONNECTIONS and KEEP_ALIVE_TIMEOUT_SECONDS, as `nexus-ai serve` and `nexus-ai worker`
hand them to uvicorn, on real servers: the cap's 503 and where it counts, and what the
keep-alive timeout does and does not close (uvicorn has no header-read timeout)."""

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from api import cli
from tests.conftest import API_MAIN, BUILD_WORKER, ServerProcess, make_settings, wait_until
from tests.raw_http import HALF_HEADERS, connect, exchange, get, is_open


@contextmanager
def held(port: int, count: int, *, idle: int = 0) -> Iterator[list[socket.socket]]:
    """`count` connections held open: `idle` of them after a whole request and its answer
    (keep-alive), the rest in the middle of their headers."""
    sockets: list[socket.socket] = []
    try:
        for n in range(count):
            sock = connect(port)
            sockets.append(sock)
            if n < idle:
                assert exchange(sock)[0] == 200
            else:
                sock.sendall(HALF_HEADERS)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_the_settings_reach_uvicorn(tmp_path: Path) -> None:
    # Unset: uvicorn's own defaults, no cap and 5 s.
    assert cli.connection_options(make_settings(tmp_path)) == {
        "limit_concurrency": None, "timeout_keep_alive": 5}
    # uvicorn refuses once the open connections, the request's own included, reach its limit.
    assert cli.connection_options(make_settings(
        tmp_path, max_connections=3, keep_alive_timeout_seconds=75)) == {
        "limit_concurrency": 4, "timeout_keep_alive": 75}


@pytest.mark.parametrize("command", [API_MAIN, BUILD_WORKER], ids=["serve", "worker"])
def test_beyond_max_connections_uvicorn_answers_503(
        server_factory: Callable[..., ServerProcess], command: list[str]) -> None:
    cap = 4
    server = server_factory(command=command, MAX_CONNECTIONS=str(cap), KEEP_ALIVE_TIMEOUT_SECONDS="30")
    # cap - 1 others and this request's own: cap connections, all served.
    with held(server.port, cap - 1, idle=1):
        status, _, _ = get(server.port)
        assert status == 200
    # cap others open, idle ones and half-sent ones alike: the next request is refused.
    with held(server.port, cap, idle=2):
        status, headers, body = get(server.port)
        assert (status, body) == (503, b"Service Unavailable")
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["connection"] == "close"
        # uvicorn answers it before the app runs: no request id, no envelope, no access line.
        assert "x-request-id" not in headers
        # A connection past the cap is still accepted, and one that never finishes its
        # headers is never refused: the cap bounds requests served, not sockets held.
        extra = connect(server.port)
        extra.sendall(HALF_HEADERS)
        assert is_open(extra, 0.5)
        extra.close()
    # Released, the server serves again (once it has seen the connections close).
    wait_until(lambda: get(server.port)[0] == 200, timeout=5, what="requests to be served again")
    logged = [json.loads(line) for path in server.log_dir.glob("*.log")
              for line in path.read_text().splitlines()]
    assert any(entry["logger"] == "uvicorn.error" and entry["level"] == "WARNING"
               and entry["message"] == "Exceeded concurrency limit." for entry in logged)


def test_keep_alive_closes_idle_connections_but_no_header_timeout_exists(
        server_factory: Callable[..., ServerProcess]) -> None:
    timeout = 1
    server = server_factory(KEEP_ALIVE_TIMEOUT_SECONDS=str(timeout))
    with connect(server.port) as half_sent, connect(server.port) as silent, \
            connect(server.port) as idle:
        half_sent.sendall(HALF_HEADERS)
        assert exchange(idle)[0] == 200
        answered = time.monotonic()
        idle.settimeout(timeout + 4)
        assert idle.recv(1) == b""  # closed by the server
        closed_after = time.monotonic() - answered
        assert timeout - 0.2 < closed_after < timeout + 2, closed_after
        # Three times the keep-alive timeout later, the connection still sending its headers
        # and the one that never sent a byte are both held: only a proxy in front bounds them
        # (docs/SECURITY.md, "Slow clients").
        time.sleep(max(0.0, 3 * timeout - closed_after))
        assert is_open(half_sent, 0.1) and is_open(silent, 0.1)
        assert get(server.port)[0] == 200
