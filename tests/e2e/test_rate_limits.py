"""Rate limits hold across processes (issue 12, item 6): two uvicorn workers on one SQLite
file, and two instances on one DynamoDB table (the moto server), admit together exactly what
one would: a limit of 20 requests a minute admits 20 wherever they land; a larger one, taken
in shares, never more than its limit and at most (processes - 1) x its share fewer; builds
per hour exactly."""

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests import moto_server
from tests.conftest import REPO, REQUIREMENT, ServerProcess, wait_until
from tests.observability.conftest import log_entries
from tests.observability.test_server import requests_per_worker

LIMITS = {"AUTH_MODE": "api_key", "KEY_REQUESTS_PER_MINUTE": "20",
          "TENANT_REQUESTS_PER_MINUTE": "100", "KEY_BUILDS_PER_HOUR": "3",
          "OFFLINE_STAGE_DELAY_SECONDS": "0"}


def new_key(server: ServerProcess, tenant: str = "acme") -> dict[str, str]:
    created = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "create", "--tenant", tenant, "--role", "builder"],
        env={k: v for k, v in server.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}, cwd=REPO,
        capture_output=True, text=True, check=True, timeout=60)
    return {"Authorization": f"Bearer {created.stdout.strip()}"}


def a_fresh_minute() -> None:
    """Start in the first 45 s of a UTC minute: every request of the test then falls in one
    window (a few seconds' work), whose counts the assertions are about."""
    wait_until(lambda: time.time() % 60 < 45, timeout=20, interval=0.5,
               what="a minute with 15 s to spare")


def get(servers: list[ServerProcess], n: int, headers: dict[str, str]) -> int:
    """Request `n` of a round over the servers, on a new connection (so that a server's
    workers take turns); its status."""
    server = servers[n % len(servers)]
    return httpx.get(f"{server.base_url}/api/v1/projects", headers=headers, timeout=10).status_code


def admitted(statuses: list[int]) -> int:
    assert set(statuses) <= {200, 429}, statuses
    return statuses.count(200)


def check_limits(servers: list[ServerProcess]) -> None:
    a_fresh_minute()
    first = new_key(servers[0])
    assert admitted([get(servers, n, first) for n in range(40)]) == 20
    # Four more keys of the tenant, 25 requests each: the tenant's 100 (in shares of 5) end it.
    others = [new_key(servers[0]) for _ in range(4)]
    later = [get(servers, n, key) for key in others for n in range(25)]
    assert 100 - 5 * (2 - 1) <= 20 + admitted(later) <= 100
    # Another tenant has limits of its own.
    assert get(servers, 0, new_key(servers[0], "globex")) == 200

    builder = new_key(servers[0], "initech")
    created = [httpx.post(f"{servers[n % len(servers)].base_url}/api/v1/projects", headers=builder,
                          json={"requirement": f"{REQUIREMENT} (#{n})"}, timeout=10).status_code
               for n in range(6)]
    assert created.count(201) == 3 and created.count(429) == 3, created


def test_two_workers_share_the_limits(server_factory: Callable[..., ServerProcess],
                                      tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prometheus-multiproc"
    server = server_factory(WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir), **LIMITS)
    wait_until(lambda: [e["message"] for e in log_entries(server.log_dir / "api.log")]
               .count("Application startup complete.") == 2, what="both workers to start")
    check_limits([server])
    per_worker = {pid: count for pid, count in requests_per_worker(multiproc_dir, status="200").items() if count}
    assert len(per_worker) == 2, per_worker  # both admitted some: the counts were shared


def test_two_instances_on_dynamodb_share_the_limits(server_factory: Callable[..., ServerProcess],
                                                    tmp_path: Path) -> None:
    env = moto_server.server_env(moto_server.new_prefix(), **LIMITS)
    servers = [server_factory(**env, LOG_DIR=str(tmp_path / f"logs-{n}")) for n in range(2)]
    check_limits(servers)
