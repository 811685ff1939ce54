"""A build worker against the real model server, beside an API that runs no builds: a stop sent
to the API aborts the worker's in-flight model request within a second (the model server's
connection closes and it stops generating)."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from tests.conftest import BUILD_WORKER, REQUIREMENT, ServerProcess, wait_for, wait_until
from tests.model.conftest import ModelServer, slots_busy, slots_generating


async def test_a_stop_through_the_api_aborts_the_worker_s_model_request_at_once(
        server_factory: Callable[..., ServerProcess], model_server: ModelServer,
        tmp_path: Path) -> None:
    env = {"MODEL_PROVIDER": "openai", "OPENAI_BASE_URL": model_server.base_url,
           "MODEL_NAME": model_server.model, "MODEL_TEMPERATURE": "0", "MODEL_MAX_RETRIES": "0",
           "MAX_CONCURRENT_BUILDS": "1", "MODEL_MAX_OUTPUT_TOKENS": "600"}
    api = server_factory(**env, RUN_BUILDS="false", LOG_DIR=str(tmp_path / "logs-api"))
    worker = server_factory(**env, command=BUILD_WORKER, LOG_DIR=str(tmp_path / "logs-worker"))
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as client:
        created = (await client.post("/api/v1/projects", json={"requirement": REQUIREMENT})).json()
        project_id = created["data"]["project_id"]

        async def generating() -> bool:
            build = (await client.get(f"/api/v1/projects/{project_id}")).json()["data"]["latest_build"]
            return build["status"] == "running" and await slots_generating(model_server) > 0

        def worker_s_connections() -> set[tuple[tuple[str, int], tuple[str, int]]]:
            """The server's connections from the worker only: the API's idle keep-alive one,
            which the server closes on its own after a while, is no sign of the abort."""
            assert worker.process is not None
            ends = {tuple(conn.laddr) for conn in psutil.Process(worker.process.pid).net_connections(kind="tcp")
                    if conn.raddr}
            return {conn for conn in model_server.open_connections() if conn[1] in ends}

        await wait_for(generating, timeout=60, what="the worker's first model request")
        open_at_stop = await asyncio.to_thread(worker_s_connections)
        assert open_at_stop, "the worker has no connection to the model server"
        stopped = await client.put(f"/api/v1/projects/{project_id}/control", json={"action": "stop"})
        assert stopped.json()["data"]["status"] == "stopped"

        async def aborted() -> bool:
            still_open = await asyncio.to_thread(model_server.open_connections)
            return len(still_open & open_at_stop) < len(open_at_stop) and await slots_busy(model_server) == 0

        await wait_for(aborted, timeout=1.0, interval=0.05, what="the model request to be aborted")
        build = (await client.get(f"/api/v1/projects/{project_id}")).json()["data"]["latest_build"]
        assert (build["status"], build["instance_id"]) == ("cancelled", None)
    wait_until(lambda: "Build run cancelled" in (tmp_path / "logs-worker" / "api.log").read_text(),
               timeout=5, what="the worker to log the cancelled run")
    assert worker.process is not None and worker.process.poll() is None
