"""A transparent HTTP proxy on loopback that times each chat completion it relays: from the
moment it has the client's request (headers parsed) to the moment it has passed on the last
byte of the model server's response. Item 9 puts it between the platform and llama-server, so
that the model's share of an invocation is measured on the wire, the platform's own time being
the rest.

It runs uvicorn (the project's server) in a thread of the benchmark's process, so its clock is
the client's clock (`time.perf_counter`), and relays with httpx (the project's client): bytes
as they come, no decoding, so a streamed answer stays streamed.
"""

import json
import queue
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from bench.servers import HOST, free_port

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Hop-by-hop, or recomputed by the side that sends the bytes on.
REQUEST_DROPPED = {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding"}
RESPONSE_DROPPED = {b"connection", b"keep-alive", b"transfer-encoding"}
COMPLETIONS_PATH = "/chat/completions"
START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ProxiedCall:
    started: float  # perf_counter: the proxy has the request
    ended: float  # perf_counter: the proxy has sent the response's last byte
    status: int
    # llama-server's own `timings` (prompt_ms + predicted_ms) when its answer carries them.
    server_ms: float | None

    @property
    def ms(self) -> float:
        return 1000 * (self.ended - self.started)


def server_ms(body: bytes) -> float | None:
    """prompt_ms + predicted_ms of llama-server's `timings`: in a JSON answer, or in the last
    `data:` event of a stream that has them."""
    text = body.decode(errors="replace")
    documents = ([line[len("data:"):] for line in text.splitlines() if line.startswith("data:")]
                 if text.lstrip().startswith("data:") else [text])
    found = None
    for document in documents:
        try:
            timings = json.loads(document).get("timings")
        except (ValueError, AttributeError):
            continue
        if isinstance(timings, dict):
            found = float(timings.get("prompt_ms", 0.0)) + float(timings.get("predicted_ms", 0.0))
    return found


class TimingProxy:
    """`with TimingProxy(upstream) as proxy:` serves on proxy.base_url; every chat completion
    relayed lands in `proxy.calls` (a queue: the client that caused it reads it afterwards)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.calls: queue.Queue[ProxiedCall] = queue.Queue()
        self._client: httpx.AsyncClient | None = None
        config = uvicorn.Config(self._app, host=HOST, port=self.port, lifespan="on", interface="asgi3",
                                proxy_headers=False,
                                log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="timing-proxy", daemon=True)

    def __enter__(self) -> "TimingProxy":
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the timing proxy did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._relay(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # No timeout: a long generation is the model's time, not an error of ours.
                self._client = httpx.AsyncClient(timeout=None)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        assert self._client is not None
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = self.upstream + scope["path"] + (f"?{scope['query_string'].decode()}"
                                                if scope["query_string"] else "")
        headers = [(name, value) for name, value in scope["headers"] if name.lower() not in REQUEST_DROPPED]
        request = self._client.build_request(scope["method"], url, headers=headers, content=bytes(body))
        answer = bytearray()
        response = await self._client.send(request, stream=True)
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(name, value) for name, value in response.headers.raw
                                    if name.lower() not in RESPONSE_DROPPED]})
            async for chunk in response.aiter_raw():
                answer += chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        ended = time.perf_counter()
        if scope["path"].endswith(COMPLETIONS_PATH):
            # Parsed after the clock stopped.
            self.calls.put(ProxiedCall(started=started, ended=ended, status=response.status_code,
                                       server_ms=server_ms(bytes(answer))))
