"""What a user would write instead of the platform, served by `python -m bench.serve VARIANT`:
plain FastAPI, as its tutorial shows it, answering the same requests with the same bodies.

`fastapi_health` answers GET /health with the full app's body. `fastapi_sqlite` answers the
project GET from the full app's own SQLite file: the project row and its latest build, shaped as
the platform shapes them, in the same envelope. Both return dicts and let FastAPI encode them;
the SQLite route is a sync `def` (FastAPI runs it and its dependency in its thread pool) with a
connection per request from a `Depends(get_db)` generator, as FastAPI + sqlite3 examples write
it; `fastapi_sqlite_per_thread` keeps one connection per pool thread instead.
"""

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException

from api.core.clock import utc_now
from api.database.store import PROJECT_STATUS_FOR_BUILD
from api.services.project_service import BUILD_PRIVATE_FIELDS

HEALTH_BODY_VARIABLE = "BENCH_HEALTH_BODY"
SQLITE_PATH_VARIABLE = "BENCH_SQLITE_PATH"

# The build's JSON columns, and a stage's fields in the project's snapshot; what the platform
# keeps out of its public build and the status it gives the project are its own constants.
_BUILD_JSON = ("stages", "error", "usage")
_STAGE_FIELDS = ("name", "order", "weight", "status", "started_at", "completed_at",
                 "duration_seconds", "error")


def _envelope(data: Any) -> dict[str, Any]:
    return {"success": True, "data": data, "timestamp": utc_now(), "request_id": str(uuid.uuid4())}


def fastapi_health() -> FastAPI:
    data = json.loads(os.environ[HEALTH_BODY_VARIABLE])["data"]
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return _envelope({**data, "timestamp": utc_now()})

    return app


def _project_app(connection: Callable[..., Iterator[sqlite3.Connection]]) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}  # what the bench polls until the server is up

    @app.get("/api/v1/projects/{project_id}")
    def get_project(project_id: str,
                    conn: Annotated[sqlite3.Connection, Depends(connection)]) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM projects WHERE project_id = ?", (project_id,)).fetchone()
        if row is None:
            raise HTTPException(status_code=404, detail="project not found")
        project = dict(row)
        project["tags"] = json.loads(project["tags"])
        build = dict(conn.execute("SELECT * FROM builds WHERE build_id = ?",
                                  (project["latest_build_id"],)).fetchone())
        for column in _BUILD_JSON:
            if build[column] is not None:
                build[column] = json.loads(build[column])
        stages = build.pop("stages")
        build["instance_id"] = build["owner"]
        latest = {key: value for key, value in build.items() if key not in BUILD_PRIVATE_FIELDS}
        project.update(status=PROJECT_STATUS_FOR_BUILD[build["status"]], progress=build["progress"],
                       current_stage=build["current_stage"])
        snapshot = [{key: stage[key] for key in _STAGE_FIELDS}
                    | {"sub_stages": [{"name": sub["name"], "status": sub["status"]}
                                      for sub in stage["sub_stages"]]} for stage in stages]
        return _envelope({**project, "latest_build": latest, "stages_snapshot": snapshot})

    return app


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def fastapi_sqlite() -> FastAPI:
    """A connection per request, opened and closed by a `Depends(get_db)` generator: the usual
    pattern of FastAPI + sqlite3 examples."""
    path = os.environ[SQLITE_PATH_VARIABLE]

    def get_db() -> Iterator[sqlite3.Connection]:
        conn = _connect(path)
        try:
            yield conn
        finally:
            conn.close()

    return _project_app(get_db)


def fastapi_sqlite_per_thread() -> FastAPI:
    """One connection per thread of FastAPI's pool, kept: the tuned variant."""
    path = os.environ[SQLITE_PATH_VARIABLE]
    local = threading.local()

    def get_db() -> Iterator[sqlite3.Connection]:
        if not hasattr(local, "conn"):
            local.conn = _connect(path)
        yield local.conn

    return _project_app(get_db)


VARIANTS = {"fastapi_health": fastapi_health, "fastapi_sqlite": fastapi_sqlite,
            "fastapi_sqlite_per_thread": fastapi_sqlite_per_thread}
