"""Item 6: build throughput, and what running builds do to the API's tail latency."""

import shlex
import time

from bench import wrk
from bench.client import built_project, create_projects, overview, wait_for_builds
from bench.context import Context, show_command
from bench.results import Row, Side, Target

ROUTE = "GET /api/v1/projects/{project_id}"


def engine(ctx: Context) -> list[Row]:
    """Idle window, then a batch of builds (offline provider, no stage delay) with the same
    light load on the API, alternated; builds/s from the first POST to the last finished build."""
    profile = ctx.profile
    server = ctx.server("full", "builds", settings={"OFFLINE_STAGE_DELAY_SECONDS": "0"})
    url = f"{server.base_url}/api/v1/projects/{built_project(server.base_url)}"
    connections = profile.build_load_connections
    idle_seconds = max(profile.run_seconds, 2)
    throughput = Row(item=6, name=f"{profile.builds} builds, offline provider, no stage delay",
                     a=Side("builds/s", "builds/s"))
    latency = Row(item=6, name=f"{ROUTE}, {connections} connections: p99",
                  a=Side("while building", "ms p99"), b=Side("idle", "ms p99"),
                  target=Target("<=", 2.0))
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
