"""Schemathesis (issue 13 item 2) against a live server: the OpenAPI document tells the truth.

Every phase (examples, coverage, fuzzing, stateful) with the checks, seed and time budget of
`schemathesis.toml`; the run must find nothing. On a failure the report names each case with a
curl command that reproduces it.
"""

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import REPO, ServerProcess
from tests.secrets_check import record_secret
from tests.tooling import tool

CONFIG = REPO / "schemathesis.toml"
RUN_TIMEOUT_SECONDS = 420  # the config's max-time (150 s) and the phases that run to their end


def test_schemathesis_finds_nothing_against_a_live_server(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    schemathesis = tool("schemathesis", "pip install -e '.[test]'")
    # Production: API keys. An admin's key reaches every operation; the document is an operator's.
    token = secrets.token_urlsafe(32)
    # Without rate limits: thousands of requests a minute, and ignored_auth's refusals, would
    # meet them (tests/routers/test_limits.py tests them).
    unlimited = {name: "0" for name in ("KEY_REQUESTS_PER_MINUTE", "TENANT_REQUESTS_PER_MINUTE",
                                        "KEY_BUILDS_PER_HOUR", "TENANT_BUILDS_PER_HOUR",
                                        "KEY_INVOCATIONS_IN_FLIGHT", "AUTH_FAILURES_PER_MINUTE")}
    server = server_factory(OFFLINE_STAGE_DELAY_SECONDS="0", ENVIRONMENT="production",
                            OPERATOR_TOKEN=token, LOG_DIR=str(tmp_path / "logs"), **unlimited)
    key = subprocess.run([sys.executable, "-m", "api.cli", "keys", "create", "--tenant", "default",
                          "--role", "admin", "--name", "schemathesis"], env=server.env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.strip()
    record_secret(key)
    document = tmp_path / "openapi.json"
    document.write_bytes(httpx.get(f"{server.base_url}/openapi.json",
                                   headers={"Authorization": f"Bearer {token}"}).content)
    assert json.loads(document.read_text())["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    result = subprocess.run(
        [schemathesis, "--config-file", str(CONFIG), "run", str(document), "--url", server.base_url,
         "--header", f"Authorization: Bearer {key}",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
    # It did test: every operation, every phase.
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", result.stdout)
    assert selected and len(set(selected.groups())) == 1, result.stdout[-5000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in result.stdout, result.stdout[-5000:]
    # And the server stayed healthy: no traceback in its error log.
    errors = (tmp_path / "logs" / "error.log")
    assert "Traceback" not in (errors.read_text() if errors.exists() else ""), errors.read_text()[-5000:]
