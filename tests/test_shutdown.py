"""SIGTERM drains: readiness fails at once while requests are still served, then the server stops."""

import signal
import time
from typing import Any

import httpx

from tests.conftest import REQUIREMENT


def test_sigterm_fails_readiness_and_keeps_serving_during_the_drain(server_factory: Any) -> None:
    server = server_factory(SHUTDOWN_DRAIN_SECONDS="3")
    assert httpx.get(f"{server.base_url}/health/ready").status_code == 200
    server.process.send_signal(signal.SIGTERM)

    def draining() -> bool:
        return httpx.get(f"{server.base_url}/health/ready").status_code == 503

    deadline = time.monotonic() + 5
    while not draining():
        assert time.monotonic() < deadline, "readiness never failed"
        time.sleep(0.02)
    probe = httpx.get(f"{server.base_url}/health/ready").json()
    assert probe["error"]["code"] == "SERVICE_UNAVAILABLE"
    # Still serving reads, but no new builds.
    assert httpx.get(f"{server.base_url}/api/v1/projects").status_code == 200
    refused = httpx.post(f"{server.base_url}/api/v1/projects", json={"requirement": REQUIREMENT})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert server.process.wait(timeout=30) == -signal.SIGTERM
