"""A Bedrock double: a real HTTP server on a loopback port that answers as Bedrock's REST-JSON
and event-stream protocols do, so requests go through the whole of botocore (signing,
botocore's retry handler, parsing) and never reach AWS.

    use_dummy_aws_credentials(monkeypatch, tmp_path)
    async with serving(BedrockDouble()) as bedrock:
        bedrock.answers.append(bedrock.stream(*STREAM))
        provider = BedrockProvider(MODEL, None, 5.0, 0, endpoint_url=bedrock.url)
"""

import asyncio
import contextlib
import json
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

# A real model id: its ':' must survive the trip through the request path.
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
REGION = "us-east-1"
Answer = Callable[[web.Request], Any]
# How long a held stream waits for its client to leave before giving up on it.
HOLD_LIMIT_SECONDS = 10


def use_dummy_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and nothing of this machine's AWS set-up (profiles, endpoints)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK",
                 "AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


# -- Bedrock's wire formats --------------------------------------------------------------------
def converse_body(text: str = "Hello", stop_reason: str = "end_turn", input_tokens: int = 11,
                  output_tokens: int = 3) -> dict[str, Any]:
    return {"output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": stop_reason, "metrics": {"latencyMs": 5},
            "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens,
                      "totalTokens": input_tokens + output_tokens}}


def aws_error(status: int, code: str, message: str) -> Answer:
    return lambda _: web.json_response({"message": message}, status=status,
                                       headers={"x-amzn-ErrorType": code})


def event_message(headers: dict[str, str], payload: dict[str, Any]) -> bytes:
    """One message of the vnd.amazon.eventstream framing: prelude, its CRC, string headers,
    the JSON payload and the message CRC."""
    encoded = b"".join(bytes([len(name)]) + name.encode() + b"\x07"
                       + struct.pack(">H", len(value)) + value.encode()
                       for name, value in headers.items())
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 12 + len(encoded) + len(body) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + body
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return event_message({":message-type": "event", ":event-type": kind,
                          ":content-type": "application/json"}, payload)


def stream_error(kind: str, message: str) -> bytes:
    return event_message({":message-type": "exception", ":exception-type": kind,
                          ":content-type": "application/json"}, {"message": message})


def delta(text: str) -> bytes:
    return event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})


def stream_events(*pieces: str, stop_reason: str, input_tokens: int,
                  output_tokens: int) -> list[bytes]:
    """A whole ConverseStream answer: its text in `pieces`, then the stop and the usage."""
    return [event("messageStart", {"role": "assistant"}),
            *(delta(piece) for piece in pieces),
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("messageStop", {"stopReason": stop_reason}),
            event("metadata", {"usage": {"inputTokens": input_tokens, "outputTokens": output_tokens,
                                         "totalTokens": input_tokens + output_tokens},
                               "metrics": {"latencyMs": 4}})]


STREAM = stream_events("Hel", "lo", stop_reason="max_tokens", input_tokens=7, output_tokens=2)


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class BedrockDouble:
    """Answers each request with the next scripted answer, and keeps what it was sent. With
    nothing scripted it answers `default`, or (None) refuses the request as unexpected."""

    answers: deque[Answer] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    default: Answer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(Seen(request.path, dict(request.query), dict(request.headers),
                              json.loads(raw) if raw else None))
        if self.answers:
            answer = self.answers.popleft()(request)
        elif self.default is not None:
            answer = self.default(request)
        else:
            answer = aws_error(400, "UnexpectedRequest", f"nothing scripted: {request.path}")(request)
        return await answer if asyncio.iscoroutine(answer) else answer

    def stream(self, *messages: bytes, hold: bool = False) -> Answer:
        """An event stream written message by message; `hold` keeps it open afterwards until
        the client goes away (or the test ends)."""
        async def answer(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(
                headers={"Content-Type": "application/vnd.amazon.eventstream"})
            await response.prepare(request)
            for message in messages:
                await response.write(message)
            if hold:
                await self._wait_for_disconnect(request)
            return response
        return answer

    def stall(self) -> Answer:
        async def answer(request: web.Request) -> web.StreamResponse:
            await self.release.wait()
            return web.json_response(converse_body())
        return answer

    def like_bedrock(self, text: str, *, input_tokens: int, output_tokens: int,
                     models: tuple[str, ...] = (MODEL,)) -> Answer:
        """A successful answer to whatever is asked: Converse, ConverseStream (`text` in
        word-sized deltas) or ListFoundationModels."""
        pieces = [word + " " for word in text.split(" ")]
        pieces[-1] = pieces[-1].rstrip(" ")
        streamed = self.stream(*stream_events(*pieces, stop_reason="end_turn",
                                              input_tokens=input_tokens,
                                              output_tokens=output_tokens))

        def answer(request: web.Request) -> Any:
            if request.path.endswith("/converse-stream"):
                return streamed(request)
            if request.path.endswith("/converse"):
                return web.json_response(converse_body(text, input_tokens=input_tokens,
                                                       output_tokens=output_tokens))
            if request.path == "/foundation-models":
                return web.json_response({"modelSummaries": [
                    {"modelArn": f"arn:aws:bedrock:{REGION}::foundation-model/{model}",
                     "modelId": model} for model in models]})
            return aws_error(404, "UnknownOperationException", request.path)(request)
        return answer

    async def _wait_for_disconnect(self, request: web.Request) -> None:
        deadline = time.monotonic() + HOLD_LIMIT_SECONDS
        while request.transport is not None and not request.transport.is_closing():
            if self.release.is_set() or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)
        self.disconnected.set()


@contextlib.asynccontextmanager
async def serving(double: BedrockDouble) -> AsyncIterator[BedrockDouble]:
    """`double` on a free loopback port (its `url`), for the length of the block."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", double.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    double.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    await web.SockSite(runner, sock).start()
    try:
        yield double
    finally:
        double.release.set()
        await runner.cleanup()
