"""A scripted OpenAI-compatible Chat Completions server, for the failure modes a hosted API
cannot be made to show on demand: 429 with Retry-After, 500s, hangs, streams cut mid-way, an
endpoint that refuses json_schema output; `Respond` computes an answer from the request.

It is a real HTTP/1.1 server on 127.0.0.1 (the standard library's, one thread per connection,
so it never runs on a test's event loop): the SDK, httpx and the sockets under test are all
real. Use it from async tests in this process, or point a platform started as a subprocess at
it with OPENAI_BASE_URL=server.url.

    with ScriptedOpenAI() as server:
        server.script(rate_limited(retry_after=1), Answer("hello"))
        ...  # call server.url
        assert len(server.requests) == 2
"""

import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

DEFAULT_MODEL = "scripted-model"


@dataclass(frozen=True)
class Answer:
    """A normal answer: one JSON body, or SSE chunks of `chunk_chars` when the request streams
    (usage in a last chunk only when the request asks for it with stream_options)."""

    text: str = "ok"
    # (prompt_tokens, completion_tokens); None: the answer reports no usage at all.
    usage: tuple[int, int] | None = (12, 5)
    finish_reason: str = "stop"
    chunk_chars: int = 4
    # Between stream chunks; the server notices a client that leaves while it waits.
    chunk_delay: float = 0.0


@dataclass(frozen=True)
class Fail:
    """An error answer: `status`, a JSON `body` and extra headers."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Hang:
    """Never answers: holds the request until the client disconnects or the server stops."""


@dataclass(frozen=True)
class CutStream:
    """Starts a streamed answer, sends `chunks` chunks, then closes the connection mid-body; with
    `send_done` it ends the body properly after them but never sends a finish_reason."""

    text: str = "an answer that never ends"
    chunks: int = 2
    chunk_chars: int = 4
    send_done: bool = False


# What the server does with one request.
Served = Answer | Fail | Hang | CutStream


@dataclass(frozen=True)
class Respond:
    """A behaviour computed from the request's JSON body, on the server's thread: for answers
    that depend on what was asked (a build stage's, told by its system prompt). An exception
    it raises is answered as a 500 naming it, so that a broken script shows in the failure."""

    behaviour: Callable[[dict[str, Any]], Served]


Behaviour = Served | Respond
# An answer whose text is not valid JSON (cut inside a list): the engine must reject it.
MALFORMED_JSON = '{"agent_name": "triage_agent", "tools": [{"name": "lookup_order"'


def rate_limited(retry_after: float = 1) -> Fail:
    return Fail(429, _openai_error("Rate limit reached, please retry", "rate_limit_exceeded"),
                (("Retry-After", f"{retry_after:g}"),))


def server_error(status: int = 500) -> Fail:
    return Fail(status, _openai_error("The server had an error while processing your request", "server_error"))


def schema_refusal(style: Literal["llama.cpp", "vllm"] = "llama.cpp") -> Fail:
    """A 400 refusing `response_format: json_schema`, in the body shape each server sends."""
    if style == "vllm":
        return Fail(400, {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
                          "message": "response_format type 'json_schema' is not supported by this model"})
    return Fail(400, {"error": {"code": 400, "type": "invalid_request_error",
                                "message": 'response_format type must be one of "text" or "json_object"'}})


def stream_options_refusal() -> Fail:
    return Fail(400, _openai_error("Unrecognized request argument supplied: stream_options",
                                   "invalid_request_error"))


def _openai_error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@dataclass
class ReceivedRequest:
    method: str
    path: str
    # Header names lower-cased.
    headers: dict[str, str]
    body: dict[str, Any] | None
    # Respond's computed behaviour, not Respond itself.
    behaviour: Served | None
    received_at: float  # time.monotonic()
    ended_at: float | None = None
    # The client closed the connection before the answer was complete.
    disconnected: bool = False

    @property
    def streamed(self) -> bool:
        return bool(self.body and self.body.get("stream"))


class ScriptedOpenAI:
    """Serves scripted behaviours first in, first out; `default` when none is left."""

    def __init__(self, *, default: Behaviour = Answer(), models: tuple[str, ...] = (DEFAULT_MODEL,)) -> None:
        self.default = default
        self.models = models
        self._script: deque[Behaviour] = deque()
        self._requests: list[ReceivedRequest] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="scripted-openai", daemon=True)

    def __enter__(self) -> "ScriptedOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        with self._lock:
            # Unblocks the threads of idle keep-alive connections so that server_close, which
            # joins them, returns at once.
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        """The base URL, as OPENAI_BASE_URL takes it."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._script.extend(behaviours)

    @property
    def pending(self) -> int:
        """Scripted behaviours not served yet."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every chat completion request received, oldest first."""
        with self._lock:
            return [r for r in self._requests if r.path.endswith("/chat/completions")]

    @property
    def all_requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def _next(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _connected(self, connection: socket.socket, opened: bool) -> None:
        with self._lock:
            (self._connections.add if opened else self._connections.discard)(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: ScriptedOpenAI) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class _Disconnected(Exception):
    """The client closed the connection."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A bound on every socket read and write, so that no handler thread outlives its test by long.
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._connected(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._connected(self.connection, opened=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `requests`."""

    def do_GET(self) -> None:
        self._serve(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self._serve(body)

    def _serve(self, body: dict[str, Any] | None) -> None:
        owner = self.server.owner
        is_completion = self.command == "POST" and self.path.endswith("/chat/completions")
        behaviour = owner._next() if is_completion else None
        if isinstance(behaviour, Respond):
            behaviour = _computed(behaviour, body or {})
        received = ReceivedRequest(
            method=self.command, path=self.path, headers={k.lower(): v for k, v in self.headers.items()},
            body=body, behaviour=behaviour, received_at=time.monotonic())
        owner._record(received)
        try:
            if self.command == "GET" and self.path.endswith("/models"):
                self._json(200, {"object": "list", "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "scripted"}
                    for model in owner.models]})
            elif behaviour is None:
                self._json(404, _openai_error(f"no route {self.command} {self.path}", "not_found"))
            else:
                self._answer(behaviour, body or {})
        except (_Disconnected, BrokenPipeError, ConnectionResetError):
            received.disconnected = True
            self.close_connection = True
        received.ended_at = time.monotonic()

    def _answer(self, behaviour: Served, body: dict[str, Any]) -> None:
        model = str(body.get("model") or DEFAULT_MODEL)
        if isinstance(behaviour, Fail):
            self._json(behaviour.status, behaviour.body, behaviour.headers)
        elif isinstance(behaviour, Hang):
            while not self.server.owner._stopping.is_set():
                self._wait(0.05)
            self.close_connection = True
        elif isinstance(behaviour, CutStream):
            self._cut_stream(behaviour, model)
        elif body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(behaviour, model, include_usage)
        else:
            self._json(200, {
                "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": behaviour.text},
                             "finish_reason": behaviour.finish_reason, "logprobs": None}],
                **({} if behaviour.usage is None else {"usage": _usage(behaviour.usage)})})

    def _stream(self, answer: Answer, model: str, include_usage: bool) -> None:
        self._start_stream()
        self._event(_chunk(model, {"role": "assistant", "content": ""}))
        for piece in _pieces(answer.text, answer.chunk_chars):
            self._wait(answer.chunk_delay)
            self._event(_chunk(model, {"content": piece}))
        self._event(_chunk(model, {}, answer.finish_reason))
        if include_usage and answer.usage is not None:
            self._event({**_chunk(model, {}), "choices": [], "usage": _usage(answer.usage)})
        self._end_stream()

    def _cut_stream(self, cut: CutStream, model: str) -> None:
        self._start_stream()
        for piece in _pieces(cut.text, cut.chunk_chars)[:cut.chunks]:
            self._event(_chunk(model, {"content": piece}))
        if cut.send_done:
            self._end_stream()
            return
        # Mid-body, no terminating chunk: what a crashed server or a dropped proxy looks like.
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _json(self, status: int, payload: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _event(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self._write_chunk(f"data: {data}\n\n".encode())

    def _end_stream(self) -> None:
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _wait(self, seconds: float) -> None:
        """Wait `seconds`, raising _Disconnected as soon as the client closes the connection."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], left)
            if not readable:
                return
            try:
                if self.connection.recv(1, socket.MSG_PEEK) == b"":
                    raise _Disconnected
            except OSError as exc:
                raise _Disconnected from exc
            # Bytes from a client that pipelines: not ours to read now; keep waiting.
            time.sleep(min(left, 0.01))


def _computed(respond: Respond, body: dict[str, Any]) -> Served:
    try:
        return respond.behaviour(body)
    except Exception as exc:
        return Fail(500, _openai_error(f"the scripted behaviour failed: {exc!r}", "server_error"))


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _usage(usage: tuple[int, int]) -> dict[str, int]:
    prompt, completion = usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
