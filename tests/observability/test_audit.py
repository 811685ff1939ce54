"""The audit trail's file and its bounds, on the real log pipeline: audit.log only, whatever the
level; moved files reopened like the others; refusal windows counted, memory bounded."""

import contextvars
import logging
import os
from pathlib import Path

from api.core.principal import Principal
from api.instrumentation import configure_logging
from api.observability import audit
from api.observability import logging as json_logging
from tests.conftest import make_settings
from tests.observability.conftest import log_entries
from tests.observability.test_logging import lines_with

ALICE = Principal(tenant_id="acme", role="admin", user_id="alice", key_id="0123456789abcdef")


def _delete(project_id: str) -> None:
    """Audited outside any request: in a context of its own."""
    contextvars.Context().run(
        audit.record, "project.delete", principal=ALICE, outcome="success", target_type="project",
        target_id=project_id, tenant_id="acme")


def test_audit_lines_go_to_audit_log_only_whatever_the_level(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path, environment="production", log_level="ERROR"))
    logging.getLogger("api.engine").error("an application line")
    _delete("proj_1")
    logs = tmp_path / "logs"
    [line] = lines_with(logs / "audit.log", "proj_1")
    assert line == {"timestamp": line["timestamp"], "level": "INFO", "logger": "nexus_ai.audit",
                    "message": "project.delete: success", "request_id": None,
                    "client_address": None, "tenant_id": "acme", "user_id": "alice",
                    "key_id": "0123456789abcdef", "role": "admin", "action": "project.delete",
                    "target": {"type": "project", "id": "proj_1"}, "outcome": "success"}
    lines_with(logs / "error.log", "an application line")
    json_logging.write_logs_directly()
    assert [e["logger"] for e in log_entries(logs / "audit.log")] == ["nexus_ai.audit"]
    assert all(e["logger"] != "nexus_ai.audit" for e in log_entries(logs / "error.log"))
    assert not (logs / "access.log").exists()

    configure_logging(make_settings(tmp_path / "dev"))
    logging.getLogger("api").info("another application line")
    _delete("proj_2")
    lines_with(tmp_path / "dev" / "logs" / "audit.log", "proj_2")
    lines_with(tmp_path / "dev" / "logs" / "api.log", "another application line")
    json_logging.write_logs_directly()
    assert "nexus_ai.audit" not in (tmp_path / "dev" / "logs" / "api.log").read_text()


def test_a_moved_audit_log_is_reopened(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path))
    log = tmp_path / "logs" / "audit.log"
    _delete("proj_before")
    lines_with(log, "proj_before")
    os.rename(log, tmp_path / "logs" / "audit.log.1")
    _delete("proj_after")
    lines_with(log, "proj_after")
    assert [e["target"]["id"] for e in log_entries(tmp_path / "logs" / "audit.log.1")] == ["proj_before"]
    # SIGHUP's reopen (logrotate's postrotate) as well.
    os.rename(log, tmp_path / "logs" / "audit.log.2")
    json_logging.reopen_log_files()
    _delete("proj_reopened")
    lines_with(log, "proj_reopened")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_lets_one_refusal_through_and_counts_the_rest() -> None:
    clock = Clock()
    throttle = audit.Throttle(window_seconds=60, clock=clock)
    overflow = (("*",), {"client_address": "*"})
    admitted = [throttle.admit(("10.0.0.1",), {"client_address": "10.0.0.1"}, overflow=overflow)
                for _ in range(500)]
    assert [ok for ok, _ in admitted] == [True] + [False] * 499
    assert all(ended == [] for _, ended in admitted)
    assert throttle.admit(("10.0.0.2",), {"client_address": "10.0.0.2"}, overflow=overflow) == (True, [])
    clock.now += 59.9
    assert throttle.admit(("10.0.0.1",), {}, overflow=overflow) == (False, [])
    clock.now += 0.2
    # The first address's window is over: its count comes out, and a new window opens.
    assert throttle.admit(("10.0.0.1",), {"client_address": "10.0.0.1"}, overflow=overflow) == (
        True, [{"client_address": "10.0.0.1", "suppressed": 500, "window_seconds": 60}])
    throttle.admit(("10.0.0.1",), {}, overflow=overflow)
    assert throttle.drain() == [{"client_address": "10.0.0.1", "suppressed": 1, "window_seconds": 60}]
    assert throttle.drain() == []


def test_beyond_the_tracked_windows_refusals_count_together() -> None:
    throttle = audit.Throttle(window_seconds=60, max_keys=100, clock=Clock())
    overflow = (("*",), {"client_address": "*"})
    admitted = [throttle.admit((f"10.0.{n // 256}.{n % 256}",), {"client_address": str(n)},
                               overflow=overflow)[0] for n in range(10_000)]
    # 100 addresses get their line, the next one the overflow's, the rest are counted there.
    assert admitted.count(True) == 101
    assert len(throttle._windows) == 101
    assert throttle.drain() == [{"client_address": "*", "suppressed": 10_000 - 101, "window_seconds": 60}]


def test_no_window_writes_every_refusal() -> None:
    throttle = audit.Throttle(window_seconds=0, clock=Clock())
    assert all(throttle.admit(("a",), {}, overflow=(("*",), {}))[0] for _ in range(5))
    assert throttle.drain() == []
