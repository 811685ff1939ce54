"""What FastAPI's response validation would cost the answers the routes render themselves.

    python -m bench.response_models [--repeat 20000]

The routes declare their typed response models (api/schemas/*_records.py) for the OpenAPI
document and return an EnvelopeResponse rendered by orjson; FastAPI skips its own validation
and serialization for a returned Response. This measures, in process, on real answers of a
finished build (the app behind httpx's ASGI transport, SQLite in a temporary directory, the
offline provider), what returning the data and letting FastAPI validate it against the model
and dump it would cost instead: the model's TypeAdapter `validate_python` then `dump_json`, as
FastAPI's response path does, against `orjson.dumps` of the same envelope.
"""

import argparse
import asyncio
import tempfile
import timeit
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import TypeAdapter

from api.config import Settings
from api.main import create_app
from api.schemas.agent_records import AgentPublic
from api.schemas.envelope import Envelope
from api.schemas.project_records import ProjectDetail, ProjectList
from bench.machine import describe

REQUIREMENT = "Build an agent that triages customer support tickets and answers refund questions"


async def answers(data_dir: Path) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The project GET, a page of 20 projects and the agent GET, each with its model."""
    settings = Settings(_env_file=None, data_dir=data_dir, log_dir=data_dir / "logs",
                        offline_stage_delay_seconds=0.0)
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        created = [(await client.post("/api/v1/projects", json={"requirement": REQUIREMENT})).json()
                   for _ in range(20)]
        project_id = created[-1]["data"]["project_id"]
        while (await client.get(f"/api/v1/projects/{project_id}")).json()["data"]["status"] != "completed":
            await asyncio.sleep(0.05)
        agent = (await client.get("/api/v1/agents", params={"project_id": project_id})).json()
        return {
            "project GET": (Envelope[ProjectDetail], (await client.get(f"/api/v1/projects/{project_id}")).json()),
            "project list, 20 items": (Envelope[ProjectList], (await client.get("/api/v1/projects")).json()),
            "agent GET": (Envelope[AgentPublic],
                          (await client.get(f"/api/v1/agents/{agent['data']['items'][0]['agent_id']}")).json()),
        }


def microseconds(call: Any, repeat: int) -> float:
    return min(timeit.repeat(call, number=repeat, repeat=5)) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20000, help="calls per timing (best of 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        bodies = asyncio.run(answers(Path(data_dir)))
    machine = describe(None)
    print(", ".join(f"{key} {machine[key]}" for key in ("date", "cpu", "cores", "python", "fastapi")))
    print("| answer | bytes | orjson.dumps | validate + dump_json (FastAPI's path) | difference |")
    print("|---|---|---|---|---|")
    for name, (model, body) in bodies.items():
        adapter = TypeAdapter(model)
        ours = microseconds(lambda: orjson.dumps(body), args.repeat)
        fastapi = microseconds(lambda: adapter.dump_json(adapter.validate_python(body)), args.repeat)
        print(f"| {name} | {len(orjson.dumps(body)):,} | {ours:.1f} µs | {fastapi:.1f} µs | "
              f"+{fastapi - ours:.1f} µs |")


if __name__ == "__main__":
    main()
