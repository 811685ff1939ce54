"""The `store` fixture: every backend named in BACKENDS, opened on a fresh temporary location.

A second backend joins the contract suite by adding one line to BACKENDS; the tests in
test_store_contract.py run against it unchanged.
"""

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from api.database.sqlite import SQLiteStore
from api.database.store import Store
from tests import moto_server

# backend name -> a new, unopened store whose data lives under the given directory.
# Two stores made from the same directory share their data (two instances of the service).
BACKENDS: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda directory: SQLiteStore(path=directory / "nexus-ai.db",
                                            slow_query_threshold_seconds=1.0),
    "dynamodb": lambda directory: moto_server.dynamodb_store(directory),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(backend: str, tmp_path: Path) -> Callable[[], Store]:
    """Another store of the same backend on the same data, unopened."""
    return lambda: BACKENDS[backend](tmp_path)


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    opened = make_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
