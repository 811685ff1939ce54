"""No key, secret or Authorization header reaches a log file: checked after every run.

The suite records the secrets it makes or hands out (`record_secret`): every token
KeyService.create returns in the test process, every SecretStr it builds (OPERATOR_TOKEN,
OPENAI_API_KEY, a provider's API key), the OPERATOR_TOKEN and OPENAI_API_KEY of the servers it
starts, the keys the command line makes for it. tests/conftest.py appends one last item to every
run, whatever subset was selected: it reads every log file the run wrote under pytest's base
temporary directory (`*.log`, rotated `*.log.1`, the servers' `*.out`) and fails when one holds
a recorded secret, a whole key (`nxk_<id>_<secret>`, whoever made it), or an
`Authorization: Bearer` or `X-API-Key` value that was not masked. A failing item rather than an
exit status set at session end: it is reported like any other failure.

Reading is cheap: each file once, its runs of token characters gathered into a set, so a
recorded secret costs a set look-up plus a look at the few longer runs, not a pass over a file.
"""

import re
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from api.services.keys import KeyService

NODE_ID = "tests/secrets_check.py::no_secret_in_any_log_file"
# Shorter values are test labels ("sk-x") that would match by chance, not secrets.
MIN_SECRET_LENGTH = 12
SECRET_VARIABLES = ("OPERATOR_TOKEN", "OPENAI_API_KEY")
LOG_FILE = re.compile(r"\.(?:log|out)(?:\.\d+)?$")
# What generated secrets are made of (secrets.token_urlsafe, nxk_ keys, sk- keys).
TOKEN_CHARACTERS = (string.ascii_letters + string.digits + "_-").encode()
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
# Every other byte becomes a space: bytes.split() then cuts a file into its runs of token
# characters at C speed (a regex would try again at every position inside a run).
_RUNS = bytes(byte if byte in TOKEN_CHARACTERS else ord(" ") for byte in range(256))
# Each shape with the spellings that must be in a file for it to match there: found with
# `in` first, so the regular expression runs on the few files that have one.
SHAPES = (
    ("an API key", (b"nxk_",), re.compile(rb"nxk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")),
    ("an Authorization: Bearer value", (b"Bearer", b"bearer", b"BEARER"),
     re.compile(rb"\b(?:Bearer|bearer|BEARER)\s+(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}")),
    ("an X-API-Key value", (b"X-API-Key", b"X-Api-Key", b"x-api-key", b"X-API-KEY"), re.compile(
        rb"(?:X-API-Key|X-Api-Key|x-api-key|X-API-KEY)[\"']?\s*[:=]\s*[\"']?"
        rb"(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}")),
)

_recorded: set[str] = set()


def record_secret(value: str | None) -> None:
    """A secret the run made or handed out; a key's token counts with its secret part."""
    if value is None or len(value) < MIN_SECRET_LENGTH:
        return
    _recorded.add(value)
    if value.startswith("nxk_"):
        _recorded.add(value.split("_", 2)[-1])


def record_env_secrets(env: Mapping[str, str]) -> None:
    """The secrets among a server's environment variables."""
    for name in SECRET_VARIABLES:
        record_secret(env.get(name))


def recorded_secrets() -> frozenset[str]:
    return frozenset(_recorded)


def record_the_suite_s_secrets(patch: pytest.MonkeyPatch) -> None:
    """Record every key made and every SecretStr built in this process from now on."""
    create = KeyService.create
    secret_init = SecretStr.__init__

    async def recording_create(self: KeyService, **options: Any) -> Any:
        key, token = await create(self, **options)
        record_secret(token)
        return key, token

    def recording_init(self: SecretStr, secret_value: str) -> None:
        secret_init(self, secret_value)
        record_secret(secret_value)

    patch.setattr(KeyService, "create", recording_create)
    patch.setattr(SecretStr, "__init__", recording_init)


@dataclass(frozen=True)
class Leak:
    path: Path
    line: int
    what: str
    start: str  # the value's first characters only: the report must not leak it again

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what} ({self.start}…)"


def log_files(root: Path) -> Iterator[Path]:
    return (path for path in sorted(root.rglob("*")) if LOG_FILE.search(path.name) and path.is_file())


def _leak(path: Path, content: bytes, position: int, what: str, value: bytes) -> Leak:
    return Leak(path=path, line=content.count(b"\n", 0, position) + 1, what=what,
                start=value[:8].decode(errors="replace"))


def find_leaks(root: Path, secrets: Iterable[str]) -> list[Leak]:
    """Every secret-looking value and every one of `secrets` in the log files under `root`."""
    plain = {secret.encode() for secret in secrets if _TOKEN.fullmatch(secret)}
    other = {secret.encode() for secret in secrets} - plain
    shortest = min(map(len, plain), default=0)
    leaks = []
    for path in log_files(root):
        content = path.read_bytes()
        for what, spellings, shape in SHAPES:
            if any(spelling in content for spelling in spellings):
                leaks += [_leak(path, content, match.start(), what, match.group())
                          for match in shape.finditer(content)]
        # A secret of token characters in the text lies within a run of them: the run itself,
        # or one of the few runs longer than the secret.
        runs = {run for run in set(content.translate(_RUNS).split()) if len(run) >= shortest}
        found = plain & runs
        longest_first = sorted(runs - plain, key=len, reverse=True)
        found |= {secret for secret in plain - found if _within(secret, longest_first)}
        found |= {secret for secret in other if secret in content}
        leaks += [_leak(path, content, content.find(secret), "a secret the tests made", secret)
                  for secret in sorted(found)]
    return leaks


def _within(secret: bytes, longest_first: list[bytes]) -> bool:
    for run in longest_first:
        if len(run) <= len(secret):
            return False
        if secret in run:
            return True
    return False


class SecretsLeaked(Exception):
    pass


class NoSecretInAnyLogFile(pytest.Item):
    """The run's last item: every log file the run wrote, against the recorded secrets."""

    def runtest(self) -> None:
        factory: pytest.TempPathFactory = self.config._tmp_path_factory  # type: ignore[attr-defined]
        leaks = find_leaks(factory.getbasetemp(), recorded_secrets())
        if leaks:
            raise SecretsLeaked("\n".join(map(str, leaks)))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, SecretsLeaked):
            return f"Secrets in the run's log files:\n{excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, "no secret in any log file"


def append_check(session: pytest.Session, items: list[pytest.Item]) -> None:
    """For `pytest_collection_modifyitems`, after deselection: the check runs last."""
    if items:
        items.append(NoSecretInAnyLogFile.from_parent(session, name="no_secret_in_any_log_file",
                                                     path=Path(__file__), nodeid=NODE_ID))
