"""The model endpoint's background probe and `checks.model_provider` in /health/detailed.

The endpoint is a real HTTP server on loopback answering `GET /v1/models` as OpenAI does,
asked through the real provider (the openai SDK); what a hosted endpoint does when it fails
(a 401 that echoes the key, a hang, a refused connection) is scripted on that server.
"""

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from api.observability.model_probe import ModelProbe, display_endpoint
from api.providers.openai_compatible import OpenAICompatibleProvider
from tests.conftest import Api, wait_for
from tests.observability.conftest import TIMESTAMP

API_KEY = "sk-probe-test-0123456789abcdef"
# A proxy's token in the base URL's userinfo: no pattern would know it for a secret.
PROXY_TOKEN = "lt4d1e9b7c2a6f30"
MODELS = {"build": "gpt-4o-mini", "invoke": "gpt-4o"}
# A hung endpoint answers after this at the latest, so that the server always shuts down.
HANG_SECONDS = 10.0


class ModelsServer(ThreadingHTTPServer):
    """`GET /v1/models` in one of three moods: `ok`, `unauthorized` (a 401 whose message quotes
    the key, as some proxies do), `hang` (no answer until released)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ModelsHandler)
        self.mood = "ok"
        self.requests = 0
        self.authorizations: list[str] = []
        self.release = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ModelsHandler(BaseHTTPRequestHandler):
    server: ModelsServer

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.server.requests += 1
        self.server.authorizations.append(self.headers.get("Authorization", ""))
        if self.path != "/v1/models":
            self._answer(404, {"error": {"message": "not found"}})
        elif self.server.mood == "hang":
            self.server.release.wait(HANG_SECONDS)
            self._answer(200, {"object": "list", "data": []})
        elif self.server.mood == "unauthorized":
            self._answer(401, {"error": {"message": f"Incorrect API key provided: {API_KEY}",
                                         "type": "invalid_request_error", "code": "invalid_api_key"}})
        else:
            self._answer(200, {"object": "list", "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "test"}
                for model in MODELS.values()]})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (a probe's timeout): nobody to answer
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test's output is the assertions'."""


@pytest.fixture
def models_server() -> Iterator[ModelsServer]:
    server = ModelsServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=HANG_SECONDS)


@pytest.fixture
async def provider_of(models_server: ModelsServer) -> Any:
    provider = OpenAICompatibleProvider(base_url=models_server.base_url, api_key=SecretStr(API_KEY),
                                        timeout_seconds=5, max_retries=0)
    yield provider
    await provider.close()


async def requested(server: ModelsServer, count: int = 1) -> None:
    async def check() -> bool:
        return server.requests >= count

    await wait_for(check, timeout=10, what=f"{count} probe request(s)")


async def reached(probe: ModelProbe, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        snapshot = probe.snapshot()
        return snapshot if snapshot["status"] == status else None

    return await wait_for(check, timeout=10, what=f"the probe to say {status}")


async def test_reachable_then_unreachable_then_back_without_showing_the_key(
        models_server: ModelsServer, provider_of: OpenAICompatibleProvider,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="api.observability.model_probe")
    probe = ModelProbe(list_models=provider_of.list_models, provider="openai",
                       endpoint=models_server.base_url, models=MODELS, interval_seconds=0.02)
    assert probe.snapshot()["status"] == "configured" and probe.snapshot()["checked_at"] is None
    probe.start()
    try:
        up = await reached(probe, "reachable")
        assert up["provider"] == "openai" and up["models"] == MODELS
        assert up["endpoint"] == models_server.base_url
        assert TIMESTAMP.fullmatch(up["checked_at"]) and up["latency_ms"] >= 0
        assert up["message"] == "The model endpoint answered with 2 model(s)"
        # The probe really asked the endpoint, with the key.
        assert models_server.authorizations[0] == f"Bearer {API_KEY}"
        # Probes go on every interval; the state is the same, so nothing more is logged.
        await requested(models_server, 5)

        models_server.mood = "unauthorized"
        down = await reached(probe, "unreachable")
        assert down["message"].startswith("The model endpoint failed: ModelError: ")
        assert "HTTP 401" in down["message"] and "Incorrect API key provided" in down["message"]

        models_server.mood = "ok"
        await reached(probe, "reachable")

        # The endpoint gone: connections refused.
        await asyncio.to_thread(models_server.shutdown)
        models_server.server_close()
        gone = await reached(probe, "unreachable")
        assert "could not reach the model endpoint" in gone["message"]
    finally:
        await probe.stop()

    # Many probes, one line per change of state.
    changes = [(record.levelname, record.getMessage()) for record in caplog.records
               if record.name == "api.observability.model_probe"]
    assert changes == [("INFO", "Model endpoint reachable"), ("WARNING", "Model endpoint unreachable"),
                       ("INFO", "Model endpoint reachable"), ("WARNING", "Model endpoint unreachable")]
    logged = json.dumps([vars(record) for record in caplog.records], default=str)
    assert API_KEY not in json.dumps([up, down, gone]) and API_KEY not in logged


async def test_a_hung_endpoint_times_out_and_never_blocks_a_request(
        models_server: ModelsServer, provider_of: OpenAICompatibleProvider, api: Api,
        app: FastAPI) -> None:
    models_server.mood = "hang"
    probe = ModelProbe(list_models=provider_of.list_models, provider="openai",
                       endpoint=models_server.base_url, models=MODELS, interval_seconds=3600,
                       timeout_seconds=1.0)
    app.state.model_probe = probe
    probe.start()
    try:
        await requested(models_server)
        # The probe is waiting on the endpoint; the health check does not.
        started = time.perf_counter()
        detailed = await api.call("GET", "/health/detailed")
        assert time.perf_counter() - started < 0.5
        assert detailed["checks"]["model_provider"]["status"] == "configured"
        assert detailed["status"] == "healthy"

        down = await reached(probe, "unreachable")
        assert down["message"] == "The model endpoint did not answer within 1 s"
        assert 1000 <= down["latency_ms"] < 3000
    finally:
        await probe.stop()


async def test_the_health_check_reads_the_cache_and_stays_healthy_when_the_model_is_down(
        api: Api, app: FastAPI) -> None:
    calls = 0

    async def list_models() -> list[str]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError(f"connection to https://{PROXY_TOKEN}@llm.example.com refused")
        return ["gpt-4o-mini"]

    probe = ModelProbe(list_models=list_models, provider="openai",
                       endpoint=f"https://{PROXY_TOKEN}@llm.example.com/v1?api-key={PROXY_TOKEN}",
                       models=MODELS, interval_seconds=3600)
    app.state.model_probe = probe
    probe.start()
    try:
        await reached(probe, "reachable")
        for _ in range(20):
            detailed = await api.call("GET", "/health/detailed")
        assert calls == 1, "the health check must read the cached result, not call the model"
        check = detailed["checks"]["model_provider"]
        assert check == probe.snapshot()
        assert check["status"] == "reachable" and check["endpoint"] == "https://llm.example.com/v1"

        await probe.probe()
        response = await api.client.get("/health/detailed")
        assert PROXY_TOKEN not in response.text
        detailed = response.json()["data"]
        assert detailed["checks"]["model_provider"]["status"] == "unreachable"
        assert detailed["checks"]["model_provider"]["message"] == (
            "The model endpoint failed: ConnectionError: connection to https://***@llm.example.com refused")
        # A model that is down neither degrades the service's status nor its readiness.
        assert detailed["status"] == "healthy"
        assert (await api.call("GET", "/health/ready"))["status"] == "ready"
    finally:
        await probe.stop()


async def test_the_offline_provider_is_never_probed(api: Api, app: FastAPI) -> None:
    async def list_models() -> list[str]:
        raise AssertionError("the offline provider has no endpoint to probe")

    probe = ModelProbe(list_models=list_models, provider="offline", endpoint=None,
                       models={"build": "offline", "invoke": "offline"})
    app.state.model_probe = probe
    probe.start()
    await asyncio.sleep(0)
    await probe.stop()
    assert (await api.call("GET", "/health/detailed"))["checks"]["model_provider"] == {
        "status": "offline", "provider": "offline", "models": {"build": "offline", "invoke": "offline"},
        "endpoint": None, "checked_at": None, "latency_ms": None,
        "message": "The offline provider calls no model endpoint"}


async def test_stop_cancels_a_probe_in_flight(models_server: ModelsServer,
                                              provider_of: OpenAICompatibleProvider) -> None:
    models_server.mood = "hang"
    probe = ModelProbe(list_models=provider_of.list_models, provider="openai",
                       endpoint=models_server.base_url, models=MODELS, timeout_seconds=HANG_SECONDS)
    probe.start()
    await requested(models_server)
    started = time.perf_counter()
    await probe.stop()
    assert time.perf_counter() - started < 1.0
    assert probe.snapshot()["status"] == "configured"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ("https://user:secret@proxy.example.com:8443/v1", "https://proxy.example.com:8443/v1"),
    ("https://sk-only-a-token@proxy.example.com/v1", "https://proxy.example.com/v1"),
    ("http://[::1]:11434/v1?api-key=secret#frag", "http://[::1]:11434/v1"),
    (None, None),
    ("", None),
])
def test_display_endpoint_drops_credentials(url: str | None, shown: str | None) -> None:
    assert display_endpoint(url) == shown
