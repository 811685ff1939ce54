"""Item 8: throughput of one vs two worker processes (`nexus-ai serve --workers N`)."""

from bench.client import built_project
from bench.context import Context
from bench.results import Row
from bench.servers import Server


def one_vs_two(ctx: Context) -> list[Row]:
    """`nexus-ai serve --workers 2` against one worker, on a probe and on an API read."""

    def start(name: str, workers: int) -> Server:
        # Several workers need the multiprocess metrics directory; both sides get one, so
        # that the worker count is the only difference.
        return ctx.server("full", name, workers=workers, settings={
            "PROMETHEUS_MULTIPROC_DIR": str(ctx.workdir(name) / "metrics")})

    one, two = start("1-worker", 1), start("2-workers", 2)
    projects = {server.port: built_project(server.base_url) for server in (one, two)}

    def side(label: str, server: Server, path: str) -> tuple[str, str, Server]:
        return label, server.base_url + path.replace("{id}", projects[server.port]), server

    return [ctx.alternate(route, a=side("2 workers", two, path), b=side("1 worker", one, path),
                          measure="throughput", connections=2 * ctx.profile.connections)
            for route, path in (("GET /health", "/health"),
                                ("GET /api/v1/projects/{project_id}", "/api/v1/projects/{id}"))]
