"""Item 8: throughput of one vs two worker processes (`nexus-ai serve --workers N`)."""

from bench.client import built_project
from bench.context import Context
from bench.results import Row
from bench.servers import Server


def one_vs_two(ctx: Context) -> list[Row]:
    """Two workers as shipped, and with the listening-socket change of bench.serve (see the
    findings in docs/PERFORMANCE.md), each against one worker."""

    def start(variant: str, name: str, workers: int) -> Server:
        # Several workers need the multiprocess metrics directory; every side gets one, so
        # that the worker count is the only difference.
        return ctx.server(variant, name, workers=workers, settings={
            "PROMETHEUS_MULTIPROC_DIR": str(ctx.workdir(name) / "metrics")})

    one = start("full", "1-worker", 1)
    shipped = start("full", "2-workers", 2)
    fixed = start("full+tcp", "2-workers-tcp", 2)
    projects = {server.port: built_project(server.base_url) for server in (one, shipped, fixed)}

    def side(label: str, server: Server, path: str) -> tuple[str, str, Server]:
        return label, server.base_url + path.replace("{id}", projects[server.port]), server

    connections = 2 * ctx.profile.connections
    rows = [ctx.alternate("GET /health", a=side("2 workers", shipped, "/health"),
                          b=side("1 worker", one, "/health"), measure="throughput",
                          connections=connections)]
    for route, path in (("GET /health", "/health"),
                        ("GET /api/v1/projects/{project_id}", "/api/v1/projects/{id}")):
        rows.append(ctx.alternate(f"{route}, socket declared TCP",
                                  a=side("2 workers", fixed, path), b=side("1 worker", one, path),
                                  measure="throughput", connections=connections))
    return rows
