"""The run's last check (tests/secrets_check.py) finds what it must and only that, and really
fails a run, a subset too, when a secret is in a log file.

Planted files live in a directory of their own outside pytest's base temporary directory, and
the planted secrets are not recorded in this run: this run's own check must stay green."""

import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.secrets_check import find_leaks


@pytest.fixture
def outside() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="planted-") as directory:
        yield Path(directory)


def test_the_check_finds_each_kind_of_leak_and_nothing_masked(outside: Path) -> None:
    recorded, glued, other_shape = secrets.token_urlsafe(32), secrets.token_urlsafe(32), "s3cr3t.with/odd:chars"
    unrecorded_key = "nxk_0123456789abcdef_" + secrets.token_urlsafe(32)
    (outside / "a" / "logs").mkdir(parents=True)
    (outside / "a" / "logs" / "api.log").write_text("\n".join((
        '{"message": "Authorization: Bearer ***", "token": "***", "api_key": "***"}',
        f'{{"message": "bad", "value": "{recorded}"}}',
        f'{{"message": "worse", "value": "prefix-{glued}-suffix"}}',
        f'{{"message": "a whole key {unrecorded_key}"}}',
        '{"headers": "Authorization: Bearer abcdefgh12345"}',
        '{"headers": {"X-API-Key": "zzzzzzzz9999"}}',
        f'{{"odd": "{other_shape}"}}',
        '{"message": "max_tokens=512, Bearer <key> is what to send"}',
    )) + "\n")
    (outside / "b").mkdir()
    (outside / "b" / "server-1234.out").write_text(f"stderr {recorded}\n")
    (outside / "b" / "audit.log.1").write_text(f"rotated {glued}\n")
    (outside / "b" / "notes.txt").write_text(f"{recorded} is not in a log file\n")

    leaks = find_leaks(outside, [recorded, glued, other_shape])
    found = sorted((str(leak.path.relative_to(outside)), leak.line, leak.what) for leak in leaks)
    assert found == sorted([
        ("a/logs/api.log", 2, "a secret the tests made"),
        ("a/logs/api.log", 3, "a secret the tests made"),
        ("a/logs/api.log", 4, "an API key"),
        ("a/logs/api.log", 5, "an Authorization: Bearer value"),
        ("a/logs/api.log", 6, "an X-API-Key value"),
        ("a/logs/api.log", 7, "a secret the tests made"),
        ("b/audit.log.1", 1, "a secret the tests made"),
        ("b/server-1234.out", 1, "a secret the tests made"),
    ])
    # The report shows a value's start only.
    assert all(recorded not in str(leak) and glued not in str(leak) for leak in leaks)


CONFTEST = '''
import pytest
from tests.secrets_check import append_check


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    append_check(session, items)
'''
PLANTING = '''
import secrets
from tests.secrets_check import record_secret


def test_plants_a_secret(tmp_path):
    secret = secrets.token_urlsafe(32)
    record_secret(secret)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "api.log").write_text('{"message": "leaked ' + secret + '"}\\n')
    print("PLANTED", secret)


def test_writes_a_clean_line(tmp_path):
    (tmp_path / "api.log").write_text('{"message": "Authorization: Bearer ***"}\\n')
'''


def _run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "--basetemp", str(directory / "tmp"), "--rootdir", str(directory), *args],
                          cwd=directory, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def test_a_planted_secret_fails_the_run_and_a_clean_subset_passes(outside: Path) -> None:
    (outside / "pytest.ini").write_text("[pytest]\n")
    (outside / "conftest.py").write_text(CONFTEST)
    (outside / "test_planting.py").write_text(PLANTING)

    clean = _run(outside, "-k", "clean")
    assert clean.returncode == 0, clean.stdout
    assert "2 passed, 1 deselected" in clean.stdout

    planted = _run(outside, "-k", "plants", "-s")
    assert planted.returncode == 1, planted.stdout
    secret = planted.stdout.split("PLANTED ", 1)[1].split()[0]
    assert "FAILED tests/secrets_check.py::no_secret_in_any_log_file" in planted.stdout
    assert "Secrets in the run's log files:" in planted.stdout
    assert f"logs/api.log:1: a secret the tests made ({secret[:8]}…)" in planted.stdout
    assert planted.stdout.count(secret) == 1, "the report itself does not repeat the secret"
