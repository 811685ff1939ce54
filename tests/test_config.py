"""Settings from the environment and `.env`; bad choices stop start-up with a clear message."""

import subprocess
import sys
from pathlib import Path

import pytest

from api.config import Settings
from tests.conftest import REPO


def test_dotenv_is_read_and_unknown_keys_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        "LOG_LEVEL=debug\nENVIRONMENT=Production\nMAX_CONCURRENT_BUILDS=7\n"
        "AWS_PROFILE=ops\nSOME_OTHER_TOOL_SETTING=x\n")
    monkeypatch.chdir(tmp_path)
    for name in ("LOG_LEVEL", "ENVIRONMENT", "MAX_CONCURRENT_BUILDS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.log_level, settings.environment, settings.max_concurrent_builds) == ("DEBUG", "production", 7)
    assert settings.data_dir == Path("./data")


def test_environment_overrides_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("LOG_LEVEL=DEBUG\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_LEVEL", "warning")
    assert Settings().log_level == "WARNING"


def _start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "api" / "main.py")], cwd=tmp_path, capture_output=True,
        text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "API_PORT": "1", **env})


@pytest.mark.parametrize("variable, value, expected", [
    ("MODEL_PROVIDER", "openai", "MODEL_PROVIDER=openai is not available"),
    # DynamoDB needs a region, and this environment names none.
    ("STORAGE_BACKEND", "dynamodb", "STORAGE_BACKEND=dynamodb is not available without an AWS region"),
])
def test_an_unavailable_choice_fails_start_up_with_a_clear_message(
        tmp_path: Path, variable: str, value: str, expected: str) -> None:
    result = _start(tmp_path, **{variable: value})
    assert result.returncode == 1
    assert result.stderr.startswith(f"nexus-ai: {expected}")


def test_an_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    result = _start(tmp_path, MAX_CONCURRENT_BUILDS="zero")
    assert result.returncode == 1
    assert result.stderr.startswith("nexus-ai: invalid settings")
    assert "max_concurrent_builds" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_db_creates_the_database_idempotently(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "nexus-ai"
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "data")}
    for _ in range(2):
        result = subprocess.run([str(cli), "init-db"], cwd=tmp_path, capture_output=True, text=True,
                                env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Database ready (sqlite)" in result.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "nexus-ai.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 9  # up to 0009 (project description)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"projects", "builds", "agents", "invocations", "sessions", "messages", "counters"} <= tables
