"""Item 6: build throughput, and what running builds do to the API's tail latency."""

import shlex
import time

from bench import wrk
from bench.client import built_project, create_projects, overview, wait_for_builds
from bench.context import Context, show_command
from bench.results import Row, Side, Target
from bench.servers import Server

ROUTE = "GET /api/v1/projects/{project_id}"


def engine(ctx: Context) -> list[Row]:
    """Idle window, then a batch of builds (offline provider, no stage delay) with the same
    light load on the API, alternated; builds/s from the first POST to the last finished build.
    Twice: builds in the API process (the embedded default), then in a build worker beside an
    API with RUN_BUILDS=false, sharing its SQLite file."""
    no_delay = {"OFFLINE_STAGE_DELAY_SECONDS": "0"}
    in_process = ctx.server("full", "builds", settings=no_delay)
    rows = _measure(ctx, in_process, layout="builds in the API process", target=2.0)
    in_process.stop()
    api = ctx.server("full", "split-api", settings={**no_delay, "RUN_BUILDS": "false"})
    ctx.server("worker", "split-worker", settings={**no_delay, "DATA_DIR": api.settings["DATA_DIR"]})
    return rows + _measure(ctx, api, layout="builds in a worker", target=1.2)


def _measure(ctx: Context, server: Server, *, layout: str, target: float) -> list[Row]:
    profile = ctx.profile
    url = f"{server.base_url}/api/v1/projects/{built_project(server.base_url)}"
    connections = profile.build_load_connections
    idle_seconds = max(profile.run_seconds, 2)
    throughput = Row(item=6, name=f"{profile.builds} builds, offline provider, no stage delay, {layout}",
                     a=Side("builds/s", "builds/s"))
    latency = Row(item=6, name=f"{ROUTE}, {connections} connections: p99, {layout}",
                  a=Side("while building", "ms p99"), b=Side("idle", "ms p99"),
                  target=Target("<=", target))
    ctx.wrk(url, seconds=profile.warmup_seconds, connections=connections)
    for _ in range(profile.build_pairs):
        idle = ctx.wrk(url, seconds=idle_seconds, connections=connections)
        before = overview(server.base_url)
        finished = before["successful_builds"] + before["failed_builds"]
        started = time.perf_counter()
        create_projects(server.base_url, profile.builds)
        load = wrk.Background(url, connections=connections)
        try:
            after = wait_for_builds(server.base_url, finished=finished + profile.builds,
                                    timeout=60 + profile.builds)
        finally:
            busy = load.stop()
        assert ctx.item is not None
        ctx.item.command(show_command(shlex.join(load.command))
                         + "   # stopped (SIGINT) when the builds are done")
        elapsed = time.perf_counter() - started
        if after["failed_builds"] != before["failed_builds"] or busy.errors:
            raise RuntimeError(f"builds failed or requests failed under load: {after}, {busy.errors}")
        throughput.a.values.append(profile.builds / elapsed)
        latency.a.values.append(busy.latency_ms["p99"])
        latency.b.values.append(idle.latency_ms["p99"])  # type: ignore[union-attr]
        latency.ratios.append(busy.latency_ms["p99"] / idle.latency_ms["p99"])
        latency.notes.append(
            f"pair {len(latency.ratios)}: idle p50 {idle.latency_ms['p50']:.2f} ms, "
            f"{idle.requests_per_second:.0f} req/s; building p50 {busy.latency_ms['p50']:.2f} ms, "
            f"{busy.requests_per_second:.0f} req/s over {elapsed:.1f} s")
        ctx.log(f"{profile.builds} builds in {elapsed:.1f} s; p99 {busy.latency_ms['p99']:.2f} ms "
                f"building vs {idle.latency_ms['p99']:.2f} ms idle")
    return [throughput, latency]
