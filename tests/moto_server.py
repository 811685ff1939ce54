"""A moto server (`moto[server]`): the DynamoDB the tests talk to over HTTP on a loopback port.

One server per test session, started on first use as a separate process and stopped when the
session ends; each test gets its own table prefix, so tests never see each other's data.

Run as `python -m tests.moto_server PORT PARENT_PID` it serves moto's application with one
request at a time: moto's own `moto_server` serves requests on concurrent threads without
isolating them, so two conditional writes racing on one item could both succeed, whereas
DynamoDB applies each request atomically (the store's optimistic concurrency relies on that).
"""

import atexit
import hashlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.tooling import stop_process

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
CREDENTIALS = ("testing", "testing")
AWS_ENV = {"AWS_ACCESS_KEY_ID": CREDENTIALS[0], "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
           "AWS_DEFAULT_REGION": REGION}
START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "MotoServer":
        # The request log goes to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.moto_server", str(self.port), str(os.getpid())],
            cwd=REPO, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.endpoint}/moto-api/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {START_TIMEOUT_SECONDS:g} s")

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


_server: MotoServer | None = None
_lock = threading.Lock()


def endpoint() -> str:
    """The session's moto server, started on first use."""
    global _server
    with _lock:
        if _server is None:
            _server = MotoServer().start()
            atexit.register(_server.stop)
        return _server.endpoint


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"


def dynamodb_store(directory: Path) -> Any:
    """A DynamoDB store whose tables belong to `directory`: two stores made from the same
    directory share their data, as two instances of the service do."""
    from api.database.dynamodb_client import DynamoDBStore

    prefix = "t" + hashlib.sha256(str(directory).encode()).hexdigest()[:12] + "_"
    return DynamoDBStore(region=REGION, endpoint_url=endpoint(), table_prefix=prefix,
                         connect_timeout_seconds=2.0, read_timeout_seconds=5.0, max_attempts=5,
                         retry_mode="standard", slow_query_threshold_seconds=1.0,
                         credentials=CREDENTIALS)


def server_env(prefix: str, **extra: str) -> dict[str, str]:
    """The environment of an API process on the session's moto server."""
    return {"STORAGE_BACKEND": "dynamodb", "DYNAMODB_ENDPOINT_URL": endpoint(),
            "DYNAMODB_REGION": REGION, "DYNAMODB_TABLE_PREFIX": prefix, **AWS_ENV, **extra}


def delete_tables(prefixes: Iterable[str]) -> None:
    import boto3

    client = boto3.client("dynamodb", endpoint_url=endpoint(), region_name=REGION,
                          aws_access_key_id=CREDENTIALS[0], aws_secret_access_key=CREDENTIALS[1])
    for prefix in prefixes:
        with suppress(client.exceptions.ResourceNotFoundException):
            client.delete_table(TableName=f"{prefix}platform")


@contextmanager
def dynamodb_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Settings overrides for an in-process app on a fresh table prefix, with dummy
    credentials in the environment for the AWS chain; the table goes afterwards."""
    prefix = new_prefix()
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    try:
        yield {"storage_backend": "dynamodb", "dynamodb_endpoint_url": endpoint(),
               "dynamodb_region": REGION, "dynamodb_table_prefix": prefix}
    finally:
        delete_tables([prefix])


def _roll_back_items_not_tables() -> None:
    """moto backs up a whole table for each item of a transaction (deep copies), so a
    transaction costs as much as the table is large and the tests would time moto, not the
    store. Back up the items the transaction touches instead; all or nothing as before."""
    import copy

    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    backend_class = models.DynamoDBBackend
    transact = backend_class.transact_write_items

    class TablesUncopied:
        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        try:
            backup = []
            for entry in transact_items:
                operation = next(iter(entry.values()))
                table = self.get_table(operation["TableName"])
                key = operation.get("Key") or {
                    name: operation["Item"][name]
                    for name in (table.hash_key_attr, table.range_key_attr) if name}
                item = self.get_item(operation["TableName"], key)
                backup.append((operation["TableName"], key,
                               copy.deepcopy(item.to_json()["Attributes"]) if item else None))
        except Exception:  # noqa: BLE001 -- moto's own validation answers malformed requests
            return transact(self, transact_items)
        models.copy = TablesUncopied  # type: ignore[assignment]
        try:
            transact(self, transact_items)
        except Exception:
            for table_name, key, attributes in reversed(backup):
                if attributes is None:
                    self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, attributes)
            raise
        finally:
            models.copy = copy  # type: ignore[assignment]

    backend_class.transact_write_items = transact_write_items


def _serve(port: int, parent_pid: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    _roll_back_items_not_tables()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    application = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with one_at_a_time:
            return list(application(environ, start_response))

    def exit_with_parent() -> None:
        # A test session killed hard must not leave the server behind.
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    run_simple("127.0.0.1", port, serialized, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
