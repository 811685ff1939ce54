"""DynamoDB requests and latency of each API operation, beside SQLite.

    python -m bench.dynamodb_requests [--sizes 20 500] [--iterations 20] [--write]

Both apps run in this process behind httpx's ASGI transport, so the figures are the app's and
its store's, not a network's: SQLite on a file in a temporary directory, DynamoDB on a local
moto server (a separate process on a loopback port, as the tests start it). The DynamoDB store
counts its own HTTP requests (`request_counts`: one per request sent, retries included); the
build engine's background loops are stopped while operations are measured, so every request
counted belongs to the operation. `--write` replaces the `## DynamoDB` section of
docs/PERFORMANCE.md with the results.

moto answers in milliseconds where DynamoDB in the same region answers in single-digit
milliseconds too, but moto serves one request at a time and its costs differ per operation:
read the latencies as relative, and the request counts as exact.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

from api.config import Settings
from api.core import ids
from api.core.records import Build, Invocation, Project
from api.database.store import DEFAULT_TENANT as TENANT, Store
from api.main import create_app
from bench.machine import describe
from tests import moto_server

REPO = Path(__file__).resolve().parent.parent
PERFORMANCE = REPO / "docs" / "PERFORMANCE.md"
REQUIREMENTS = ("Build an agent that triages customer support tickets and answers refund questions",
                "Create an agent that builds weekly sales reports and forecasts revenue from CSV data")
COMMAND = "python -m bench.dynamodb_requests --write"


@dataclass
class Measure:
    requests: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def request_figure(self) -> str:
        low, high = min(self.requests), max(self.requests)
        return str(low) if low == high else f"{low}–{high}"

    def milliseconds(self, quantile: float) -> float:
        ordered = sorted(self.seconds)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


class Client:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                      base_url="http://bench")

    @property
    def store(self) -> Store:
        return self.app.state.store

    def sent(self) -> int:
        return sum(getattr(self.store, "request_counts", {}).values())

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json()["data"]


def settings(backend: str, directory: Path, prefix: str) -> Settings:
    values: dict[str, Any] = {"data_dir": directory / "data", "log_dir": directory / "logs",
                              "offline_stage_delay_seconds": 0.0,
                              # No flush of the API call count while operations are measured.
                              "api_calls_flush_seconds": 3600.0}
    if backend == "dynamodb":
        values.update(storage_backend="dynamodb", dynamodb_endpoint_url=moto_server.endpoint(),
                      dynamodb_region=moto_server.REGION, dynamodb_table_prefix=prefix)
    return Settings(_env_file=None, **values)


async def wait_completed(client: Client, project_id: str) -> dict[str, Any]:
    while True:
        project = await client.call("GET", f"/api/v1/projects/{project_id}")
        if project["status"] in ("completed", "failed"):
            return project
        await asyncio.sleep(0.05)


async def one_build(client: Client) -> tuple[int, float]:
    """Requests the engine sends for one build (its claim loop and lease renewals included),
    found without polling the store: the engine says when the run is over."""
    engine = client.app.state.engine
    before = client.sent()
    started = time.perf_counter()
    project = await client.call("POST", "/api/v1/projects", json={"requirement": REQUIREMENTS[0]})
    build_id = project["latest_build"]["build_id"]
    while not engine.is_running(build_id):
        await asyncio.sleep(0.001)
    while engine.is_running(build_id):
        await asyncio.sleep(0.001)
    return client.sent() - before, time.perf_counter() - started


async def seed(client: Client, size: int) -> dict[str, Any]:
    """Real builds for real agents, then `size` projects in all, each with a finished build,
    an agent and two invocations, written through the store (as many builds would leave them)."""
    store = client.store
    real = [await client.call("POST", "/api/v1/projects", json={"requirement": requirement})
            for requirement in REQUIREMENTS]
    for project in real:
        await wait_completed(client, project["project_id"])
    agents = (await client.call("GET", "/api/v1/agents", params={"limit": 100}))["items"]
    template = await store.get_agent(tenant_id=TENANT, agent_id=agents[0]["agent_id"])
    assert template is not None
    now = time.time()
    for n in range(size - len(real)):
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - n)) + ".000000Z"
        project_id = ids.project_id()
        build = Build(tenant_id=TENANT, build_id=ids.build_id(), project_id=project_id,
                      status="queued", progress=0.0, current_stage=None, stages=[], context={},
                      created_at=at, started_at=at, updated_at=at)
        await store.create_project(tenant_id=TENANT, project=Project(
            tenant_id=TENANT, project_id=project_id, user_id=f"user{n % 10}",
            project_name=f"bulk {n}", requirement=REQUIREMENTS[n % 2], priority=3, tags=["bench"],
            status="pending", progress=0.0, current_stage=None, latest_build_id=build.build_id,
            created_at=at, updated_at=at), build=build)
        await store.update_build(tenant_id=TENANT, build_id=build.build_id, expect_status=("queued",), changes={
            "status": "succeeded", "progress": 100.0, "finished_at": at, "updated_at": at,
            "duration_seconds": 42.0})
        agent = template.model_copy(update={
            "agent_id": f"{project_id}:{template.agent_name}", "project_id": project_id,
            "build_id": build.build_id, "created_at": at, "updated_at": at})
        await store.put_agent(tenant_id=TENANT, agent=agent)
        for _ in range(2):
            await store.record_invocation(tenant_id=TENANT, messages=[], invocation=Invocation(
                tenant_id=TENANT, invocation_id=ids.invocation_id(), agent_id=agent.agent_id,
                project_id=project_id, input_text="hello", output="hi", status="success",
                duration_ms=3.0, trace=[], created_at=at))
    page = await client.call("GET", "/api/v1/projects", params={"limit": 5})
    agent_id = agents[0]["agent_id"]
    session = await client.call("POST", f"/api/v1/agents/{agent_id}/sessions", json={})
    for n in range(3):
        await client.call("POST", f"/api/v1/sessions/{session['session_id']}/messages",
                          json={"content": f"question {n}"})
    return {"project": real[0]["project_id"], "cursor": page["last_key"],
            "agent": agent_id, "capabilities": ",".join(agents[0]["capabilities"][:2]),
            "session": session["session_id"]}


Operation = Callable[[Client, dict[str, Any], int], Awaitable[Any]]


def _get(path: str, **params: Any) -> Operation:
    async def run(client: Client, seeded: dict[str, Any], n: int) -> Any:
        return await client.call("GET", path.format(**seeded),
                                 params={k: v.format(**seeded) for k, v in params.items()})
    return run


async def _create(client: Client, seeded: dict[str, Any], n: int) -> Any:
    project = await client.call("POST", "/api/v1/projects", json={"requirement": REQUIREMENTS[n % 2]})
    seeded.setdefault("queued", []).append(project["project_id"])


def _control_op(action: str) -> Operation:
    async def run(client: Client, seeded: dict[str, Any], n: int) -> Any:
        return await client.call("PUT", f"/api/v1/projects/{seeded['queued'][n]}/control",
                                 json={"action": action})
    return run


async def _delete(client: Client, seeded: dict[str, Any], n: int) -> Any:
    return await client.call("DELETE", f"/api/v1/projects/{seeded['queued'][n]}")


async def _invoke(client: Client, seeded: dict[str, Any], n: int) -> Any:
    return await client.call("POST", f"/api/v1/agents/{seeded['agent']}/invoke",
                             json={"input_text": f"Where is my refund for order {n}?"})


async def _new_session(client: Client, seeded: dict[str, Any], n: int) -> Any:
    return await client.call("POST", f"/api/v1/agents/{seeded['agent']}/sessions", json={})


async def _message(client: Client, seeded: dict[str, Any], n: int) -> Any:
    return await client.call("POST", f"/api/v1/sessions/{seeded['session']}/messages",
                             json={"content": f"and question {n}"})


def _range(days: int) -> dict[str, str]:
    end = date.today()
    return {"start_date": (end - timedelta(days=days - 1)).isoformat(), "end_date": end.isoformat()}


OPERATIONS: list[tuple[str, Operation]] = [
    ("POST /projects", _create),
    ("GET /projects/{id}", _get("/api/v1/projects/{project}")),
    ("GET /projects (first page of 20)", _get("/api/v1/projects", limit="20")),
    ("GET /projects (next page)", _get("/api/v1/projects", limit="20", last_key="{cursor}")),
    ("GET /projects?status&user_id", _get("/api/v1/projects", status="completed", user_id="user3")),
    ("GET /projects/{id}/builds", _get("/api/v1/projects/{project}/builds")),
    ("GET /projects/{id}/stages/{stage}", _get("/api/v1/projects/{project}/stages/agent_design")),
    ("GET /projects/{id}/artifacts", _get("/api/v1/projects/{project}/artifacts")),
    ("PUT /projects/{id}/control pause", _control_op("pause")),
    ("PUT /projects/{id}/control resume", _control_op("resume")),
    ("DELETE /projects/{id} (an active build)", _delete),
    ("GET /agents (first page of 20)", _get("/api/v1/agents", limit="20")),
    ("GET /agents?capabilities=a,b", _get("/api/v1/agents", capabilities="{capabilities}")),
    ("GET /agents/{id}", _get("/api/v1/agents/{agent}")),
    ("POST /agents/{id}/invoke", _invoke),
    ("GET /agents/{id}/invocations", _get("/api/v1/agents/{agent}/invocations")),
    ("POST /agents/{id}/sessions", _new_session),
    ("POST /sessions/{id}/messages", _message),
    ("GET /sessions/{id}/messages", _get("/api/v1/sessions/{session}/messages")),
    ("GET /statistics/overview", _get("/api/v1/statistics/overview")),
    ("GET /statistics/builds (7 days)", _get("/api/v1/statistics/builds")),
    ("GET /statistics/trends (90 days)", _get("/api/v1/statistics/trends", metric="invocations",
                                              **_range(90))),
]


async def measure_backend(backend: str, size: int, iterations: int,
                          directory: Path) -> tuple[dict[str, Measure], tuple[int, float]]:
    prefix = moto_server.new_prefix()
    app = create_app(settings(backend, directory / f"{backend}-{size}", prefix))
    try:
        async with app.router.lifespan_context(app):
            client = Client(app)
            build = await one_build(client)
            seeded = await seed(client, size)
            # Quiet: no claim loop, no lease renewals; new projects still accepted (and stay queued).
            await app.state.engine.shutdown()
            app.state.engine.accepting = True
            results: dict[str, Measure] = {}
            for name, operation in OPERATIONS:
                measure = results[name] = Measure()
                for n in range(iterations + 1):
                    before = client.sent()
                    started = time.perf_counter()
                    await operation(client, seeded, n)
                    elapsed = time.perf_counter() - started
                    if n:  # the first call warms up
                        measure.seconds.append(elapsed)
                        measure.requests.append(client.sent() - before)
            await client.http.aclose()
    finally:
        if backend == "dynamodb":
            moto_server.delete_tables([prefix])
    return results, build


def render(sizes: list[int], iterations: int,
           figures: dict[tuple[str, int], tuple[dict[str, Measure], tuple[int, float]]]) -> str:
    small, large = sizes[0], sizes[-1]
    machine = describe(None)
    lines = [
        "## DynamoDB",
        "",
        ("Requests each API operation sends to DynamoDB (lower is better) and its latency beside "
         "SQLite, measured in process against a local moto server. Reproduce with:"),
        "",
        "```bash",
        f"{COMMAND} --sizes {' '.join(map(str, sizes))} --iterations {iterations}",
        "```",
        "",
        (f"Measured {machine['date']} on {machine['cpu']}, {machine['cores']}, "
         f"{machine['memory']}, Python {machine['python']}. Each figure: {iterations} calls after "
         "one warm-up; requests counted by the store (retries included); engine loops stopped "
         f"while measuring. The data: {small} or {large} projects, each with a finished build, "
         "an agent and two invocations."),
        "",
        (f"| Operation | DynamoDB requests, {small} projects | DynamoDB requests, {large} "
         f"projects | SQLite p50 / p95 ms, {large} projects | moto p50 / p95 ms, {small} "
         f"projects | moto p50 / p95 ms, {large} projects |"),
        "|---|---:|---:|---:|---:|---:|",
    ]

    def latency(measure: Measure) -> str:
        return f"{measure.milliseconds(0.5):.1f} / {measure.milliseconds(0.95):.1f}"

    for name, _ in OPERATIONS:
        dynamo_small = figures[("dynamodb", small)][0][name]
        dynamo_large = figures[("dynamodb", large)][0][name]
        lines.append(
            f"| `{name}` | {dynamo_small.request_figure()} | {dynamo_large.request_figure()} | "
            f"{latency(figures[('sqlite', large)][0][name])} | {latency(dynamo_small)} | "
            f"{latency(dynamo_large)} |")
    builds = {size: figures[("dynamodb", size)][1] for size in sizes}
    lines += [
        (f"| one build, engine (offline provider, no stage delay; claim loop and lease renewals "
         f"included) | {builds[small][0]} | {builds[large][0]} | "
         f"{figures[('sqlite', large)][1][1] * 1000:.0f} (whole build) | "
         f"{builds[small][1] * 1000:.0f} (whole build) | {builds[large][1] * 1000:.0f} "
         "(whole build) |"),
        "",
        ("How to read the latencies: moto answers a Query by reading every item of the table "
         "(and an index Query by sorting them), one request at a time, so its latency grows "
         "with the data even where the number of requests does not. DynamoDB reads only the "
         "partition asked for and answers each of these requests in single-digit milliseconds "
         "within a region: the request counts, not moto's milliseconds, say what an operation "
         "costs in latency and in request units there."),
        "",
    ]
    overview = {size: figures[("dynamodb", size)][0]["GET /statistics/overview"] for size in sizes}
    lines += [
        "The statistics overview reads two sets of aggregate items (the counter shards and "
        "today's daily shards), one BatchGetItem each: "
        + ", ".join(f"{overview[size].request_figure()} requests with {size} projects "
                    f"(p50 {overview[size].milliseconds(0.5):.1f} ms)" for size in sizes)
        + ". Lists are one Query on an index plus one BatchGetItem for the page; a project "
        "page costs the same at any depth. A build's progress writes are one TransactWriteItems "
        "each (the build, its project's mirror and, at the end, the aggregates): the owner keeps "
        "the build's last version, so it needs no read first.",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replace the `## DynamoDB` section of docs/PERFORMANCE.md, or add it; other sections
    are left as they are."""
    text = PERFORMANCE.read_text() if PERFORMANCE.exists() else "# Performance\n"
    lines = text.splitlines()
    if "## DynamoDB" in lines:
        start = lines.index("## DynamoDB")
        end = next((n for n in range(start + 1, len(lines)) if lines[n].startswith("## ")),
                   len(lines))
        lines[start:end] = section.rstrip("\n").splitlines() + [""]
        text = "\n".join(lines).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    PERFORMANCE.parent.mkdir(parents=True, exist_ok=True)
    PERFORMANCE.write_text(text)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dynamodb_requests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[20, 500],
                        help="two data sizes (projects), to show what does not grow")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    # Dummy credentials for the local endpoint, through the standard chain.
    os.environ.update(moto_server.AWS_ENV)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-dynamodb-") as directory:
        for size in args.sizes:
            for backend in ("sqlite", "dynamodb"):
                print(f"{backend}, {size} projects ...", file=sys.stderr)
                figures[(backend, size)] = await measure_backend(backend, size, args.iterations,
                                                                 Path(directory))
    section = render(args.sizes, args.iterations, figures)
    print(section)
    if args.write:
        write_section(section)
        print(f"written to {PERFORMANCE}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
