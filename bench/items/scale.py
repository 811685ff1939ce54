"""Items 4 and 5: statistics and deep pages cost the same at any size."""

import time

import httpx

from bench.client import walk_pages
from bench.context import Context
from bench.results import Row, Target
from bench.seed import seed
from bench.servers import Server


def _seeded_server(ctx: Context, name: str, **sizes: int) -> tuple[Server, str]:
    """Seed the store of server `name`, start it; the server and a note on the seeding."""
    path = ctx.workdir(name) / "data" / "nexus-ai.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx.log(f"seeding {name}: {sizes}")
    seeded = seed(path, **sizes)
    note = (f"{name}: {seeded.projects:,} projects, {seeded.builds:,} builds, {seeded.agents:,} agents, "
            f"{seeded.invocations:,} invocations; seeded in {seeded.seconds:.1f} s, "
            f"file {seeded.file_bytes / 2**20:,.0f} MiB")
    ctx.log(note)
    return ctx.server("full", name), note


def statistics(ctx: Context) -> list[Row]:
    """Item 4: GET /api/v1/statistics/overview with 1,000 vs 1,000,000 builds and invocations."""
    small, large = ctx.profile.stats_sizes
    sides, notes = {}, []
    for size in (small, large):
        name = f"{size:,}".replace(",", "_")
        server, note = _seeded_server(ctx, name, projects=max(1, size // 10), builds_per_project=10,
                                      invocations=size, agents=max(1, size // 1000))
        url = f"{server.base_url}/api/v1/statistics/overview"
        overview = httpx.get(url, timeout=30).json()["data"]
        if overview["total_builds"] != size or overview["total_invocations"] != size:
            raise RuntimeError(f"the statistics do not show the seeded store: {overview}")
        sides[size] = (url, server)
        notes.append(note)
    row = ctx.alternate("GET /api/v1/statistics/overview",
                        a=(f"{large:,} builds + {large:,} invocations", *sides[large]),
                        b=(f"{small:,} + {small:,}", *sides[small]), measure="latency",
                        connections=ctx.profile.latency_connections, target=Target("<=", 1.5))
    row.notes[:0] = notes
    return [row]


def pagination(ctx: Context) -> list[Row]:
    """Item 5: the project page at depth 1,000 vs the first page, 100,000 projects."""
    profile = ctx.profile
    server, note = _seeded_server(ctx, "projects", projects=profile.projects, builds_per_project=1,
                                  invocations=0, agents=0)
    base_url = server.base_url
    started = time.perf_counter()
    cursor = walk_pages(base_url, pages=profile.page_depth - 1, limit=profile.page_limit)
    walked = time.perf_counter() - started
    first = f"{base_url}/api/v1/projects?limit={profile.page_limit}"
    row = ctx.alternate(f"GET /api/v1/projects?limit={profile.page_limit}",
                        a=(f"page {profile.page_depth:,}", f"{first}&last_key={cursor}", server),
                        b=("page 1", first, server), measure="latency",
                        connections=profile.latency_connections, target=Target("<=", 1.5))
    row.notes[:0] = [note, f"cursor walked to page {profile.page_depth:,} "
                           f"({(profile.page_depth - 1) * profile.page_limit:,} projects deep) "
                           f"in {walked:.1f} s, {1000 * walked / (profile.page_depth - 1):.2f} ms a page"]
    return [row]
