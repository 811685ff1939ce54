"""`nexus-ai serve` with several workers hands uvicorn's supervisor a socket declared TCP."""

import socket
from typing import Any

import pytest

from api import cli


def test_several_workers_share_a_socket_declared_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only uvicorn's supervisor is replaced: it would fork workers that serve forever.
    handed: list[socket.socket] = []

    class Supervisor:
        def __init__(self, config: Any, sockets: list[socket.socket]) -> None:
            assert config.workers == 2
            handed.extend(sockets)

        def run(self) -> None:
            pass

    monkeypatch.setattr(cli, "Multiprocess", Supervisor)
    cli.run_server("api.main:app", host="127.0.0.1", port=0, workers=2)

    [sock] = handed
    try:
        # asyncio sets TCP_NODELAY on accepted connections only for sockets of this protocol;
        # without it Nagle holds each keep-alive response for the client's delayed ACK.
        assert sock.proto == socket.IPPROTO_TCP
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
    finally:
        sock.close()
