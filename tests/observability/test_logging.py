"""JSON log lines, files per environment, redaction and reopening, on real files."""

import contextvars
import json
import logging
import os
import warnings
from pathlib import Path

import pytest

from api.core.context import bind
from api.observability import logging as json_logging
from api.instrumentation import configure_logging
from tests.conftest import make_settings, wait_until
from tests.observability.conftest import log_entries


def lines_with(path: Path, text: str, count: int = 1) -> list[dict]:
    """Wait until `count` lines of `path` contain `text`; the writer is another thread."""
    def found() -> list[dict] | None:
        matching = [e for e in log_entries(path) if text in json.dumps(e)] if path.exists() else []
        return matching if len(matching) >= count else None
    return wait_until(found, what=f"{count} line(s) with {text!r} in {path}")


def test_a_record_is_one_json_line_with_context_extras_and_exception(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path))
    logger = logging.getLogger("api.services.project_service")

    def in_a_request() -> None:
        bind(request_id="550e8400-e29b-41d4-a716-446655440000", project_id="proj_abc123",
             user_id="user_123")
        logger.info("Project created successfully", extra={"priority": 3, "tags": ["a"]})
        try:
            raise ValueError("bad input")
        except ValueError:
            logger.exception("Could not create project")

    contextvars.copy_context().run(in_a_request)
    logger.info("outside any request")

    created, failed = lines_with(tmp_path / "logs" / "api.log", "proj_abc123", count=2)
    assert created["level"] == "INFO" and created["logger"] == "api.services.project_service"
    assert created["message"] == "Project created successfully"
    assert created["request_id"] == "550e8400-e29b-41d4-a716-446655440000"
    assert (created["project_id"], created["user_id"]) == ("proj_abc123", "user_123")
    assert (created["priority"], created["tags"]) == (3, ["a"])
    assert failed["level"] == "ERROR"
    assert "Traceback" in failed["exception"] and "ValueError: bad input" in failed["exception"]
    outside = lines_with(tmp_path / "logs" / "api.log", "outside any request")[0]
    assert "request_id" not in outside and "project_id" not in outside


def test_production_splits_access_and_error_files(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path, environment="production"))
    logging.getLogger("api.access").info("Request completed", extra={"status_code": 200})
    logging.getLogger("api.engine").warning("Stage slow")
    logging.getLogger("uvicorn.error").info("Started server process [1]")

    errors = lines_with(tmp_path / "logs" / "error.log", "Started server process")
    access = lines_with(tmp_path / "logs" / "access.log", "Request completed")
    assert [e["message"] for e in log_entries(tmp_path / "logs" / "access.log")] == ["Request completed"]
    assert access[0]["status_code"] == 200
    assert errors and all(e["logger"] != "api.access" for e in log_entries(tmp_path / "logs" / "error.log"))
    assert not (tmp_path / "logs" / "api.log").exists()


def test_a_burst_is_written_whole_in_order_to_each_file(tmp_path: Path) -> None:
    # The writer gathers lines and writes each file's share of a batch at once.
    configure_logging(make_settings(tmp_path, environment="production"))
    for n in range(3000):
        logging.getLogger("api.access" if n % 3 else "api.engine").info("line %d", n)
    json_logging.write_logs_directly()

    access = [e["message"] for e in log_entries(tmp_path / "logs" / "access.log")]
    errors = [e["message"] for e in log_entries(tmp_path / "logs" / "error.log")]
    assert access == [f"line {n}" for n in range(3000) if n % 3]
    assert errors == [f"line {n}" for n in range(3000) if not n % 3]


def test_log_level_and_debug(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path, log_level="warning"))
    logging.getLogger("api.x").info("hidden info")
    logging.getLogger("api.x").warning("shown warning")
    lines_with(tmp_path / "logs" / "api.log", "shown warning")
    assert not any("hidden info" in e["message"] for e in log_entries(tmp_path / "logs" / "api.log"))

    configure_logging(make_settings(tmp_path / "debug", log_level="WARNING", debug=True))
    logging.getLogger("api.x").debug("debug detail")
    lines_with(tmp_path / "debug" / "logs" / "api.log", "debug detail")


def test_reconfiguring_moves_every_line_to_the_new_place(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path / "first"))
    logging.getLogger("api").info("to the first")
    configure_logging(make_settings(tmp_path / "second"))
    logging.getLogger("api").info("to the second")

    lines_with(tmp_path / "second" / "logs" / "api.log", "to the second")
    first = [e["message"] for e in log_entries(tmp_path / "first" / "logs" / "api.log")]
    assert first == ["to the first"]
    assert len(lines_with(tmp_path / "second" / "logs" / "api.log", "to the second")) == 1


def test_stdout_gets_the_same_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(make_settings(tmp_path, log_stdout=True))
    logging.getLogger("api").info("to both")
    lines_with(tmp_path / "logs" / "api.log", "to both")
    json_logging.write_logs_directly()  # the file has it; make sure stdout was written too
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(e["message"] == "to both" and e["logger"] == "api" for e in printed)


def test_secrets_are_masked_in_messages_extras_and_tracebacks(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path))
    secrets = ["eyJhbGciOiJIUzI1NiJ9.payload.sig", "sk-proj-abcdefghijklmnop1234",
               "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AKIAIOSFODNN7EXAMPLE", "hunter2",
               "s3cr3t-t0ken"]
    logger = logging.getLogger("api.providers")
    logger.info("Calling provider with Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig")
    logger.info("key sk-proj-abcdefghijklmnop1234 in use, max_tokens=512")
    logger.info("env aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY id AKIAIOSFODNN7EXAMPLE")
    logger.info("headers", extra={"headers": {"Authorization": "Bearer s3cr3t-t0ken", "Accept": "*/*"},
                                  "api_key": "sk-proj-abcdefghijklmnop1234", "password": "hunter2",
                                  "input_tokens": 12})
    try:
        raise ConnectionError("cannot reach https://admin:hunter2@db.internal")
    except ConnectionError:
        logger.exception("Provider unreachable")

    lines_with(tmp_path / "logs" / "api.log", "Provider unreachable")
    text = (tmp_path / "logs" / "api.log").read_text()
    for secret in secrets:
        assert secret not in text
    entries = {e["message"]: e for e in log_entries(tmp_path / "logs" / "api.log")}
    assert entries["headers"]["headers"] == {"Authorization": "***", "Accept": "*/*"}
    assert entries["headers"]["input_tokens"] == 12
    assert "max_tokens=512" in text
    assert "Authorization: ***" in text


def test_a_moved_file_is_reopened_and_no_line_is_lost(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path))
    log = tmp_path / "logs" / "api.log"
    logging.getLogger("api").info("line 1")
    lines_with(log, "line 1")
    os.rename(log, tmp_path / "logs" / "api.log.1")
    logging.getLogger("api").info("line 2")
    lines_with(log, "line 2")
    os.remove(log)
    logging.getLogger("api").info("line 3")
    lines_with(log, "line 3")
    assert [e["message"] for e in log_entries(tmp_path / "logs" / "api.log.1")] == ["line 1"]
    assert log.stat().st_mode & 0o777 == 0o640 & ~_umask()


def test_reopen_request_starts_a_new_file(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path))
    log = tmp_path / "logs" / "api.log"
    logging.getLogger("api").info("before")
    lines_with(log, "before")
    os.rename(log, tmp_path / "logs" / "api.log.1")
    json_logging.reopen_log_files()
    logging.getLogger("api").info("after")
    assert [e["message"] for e in lines_with(log, "after")] == ["after"]


def test_warnings_become_json_lines(tmp_path: Path) -> None:
    configure_logging(make_settings(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning)
    warning = lines_with(tmp_path / "logs" / "api.log", "deprecated thing")[0]
    assert warning["logger"] == "py.warnings" and warning["level"] == "WARNING"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
