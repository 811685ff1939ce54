"""How long and how hard each item runs (full or quick), and the run's shared state."""

import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import wrk
from bench.results import ItemResult, Row, Side, Target
from bench.servers import ModelServer, Server


@dataclass(frozen=True)
class Profile:
    name: str
    # Many short alternated runs rather than a few long ones: background load on a shared
    # machine then hits both sides of a pair alike.
    pairs: int
    run_seconds: float  # one wrk run of a throughput or latency comparison
    warmup_seconds: float  # one untimed wrk run per side before its pairs
    connections: int  # throughput runs: enough to keep one worker busy
    latency_connections: int  # latency runs: one request at a time, no queueing
    stats_sizes: tuple[int, int]  # builds and invocations in the small and the large store
    projects: int
    page_depth: int
    page_limit: int
    builds: int
    build_pairs: int
    build_load_connections: int
    memory_warmup_seconds: float
    memory_seconds: float  # of steady load after the warm-up
    memory_users: int
    model_calls: int  # item 9: invocations through the timing proxy
    ttft_pairs: int  # item 10: platform / direct streamed call pairs


FULL = Profile(name="full", pairs=10, run_seconds=3, warmup_seconds=3, connections=16,
               latency_connections=1, stats_sizes=(1_000, 1_000_000), projects=100_000,
               page_depth=1_000, page_limit=20, builds=500, build_pairs=5, build_load_connections=2,
               memory_warmup_seconds=60, memory_seconds=540, memory_users=20,
               model_calls=100, ttft_pairs=30)
QUICK = Profile(name="quick", pairs=3, run_seconds=1, warmup_seconds=1, connections=8,
                latency_connections=1, stats_sizes=(1_000, 10_000), projects=2_000,
                page_depth=50, page_limit=20, builds=10, build_pairs=3, build_load_connections=2,
                memory_warmup_seconds=5, memory_seconds=10, memory_users=5,
                model_calls=5, ttft_pairs=3)


class Context:
    def __init__(self, profile: Profile, bench_dir: Path) -> None:
        self.profile = profile
        self.bench_dir = bench_dir
        self.started = time.monotonic()
        self.item: ItemResult | None = None
        self._servers: list[Server | ModelServer] = []

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        prefix = f"[{elapsed:7.1f}s]" + (f" item {self.item.number}:" if self.item else "")
        print(f"{prefix} {message}", file=sys.stderr, flush=True)

    # -- servers ----------------------------------------------------------------------------
    def workdir(self, name: str) -> Path:
        """Where the current item's server `name` keeps its data and logs."""
        assert self.item is not None
        return self.bench_dir / f"item{self.item.number}" / name

    def server(self, variant: str, name: str, **options: Any) -> Server:
        assert self.item is not None
        server = Server(variant, self.workdir(name), **options)
        self._servers.append(server)
        self.item.command(server.command(self.bench_dir))
        self.log(f"starting {name} ({variant}) on port {server.port}")
        return server.start()

    def model_server(self, name: str) -> ModelServer:
        """The real model server (scripts/model-server.sh), stopped with the item's servers."""
        assert self.item is not None
        server = ModelServer(self.workdir(name))
        self._servers.append(server)
        self.item.command(server.command())
        self.log(f"starting {name} (llama-server) on port {server.port}")
        return server.start()

    def stop_servers(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    # -- load -------------------------------------------------------------------------------
    def wrk(self, url: str, *, seconds: float, connections: int,
            headers: dict[str, str] | None = None) -> wrk.WrkResult:
        assert self.item is not None
        result = wrk.run(url, seconds=seconds, connections=connections, headers=headers)
        self.item.command(show_command(result.command))
        if result.errors:
            raise RuntimeError(f"{result.errors} failed requests: {result.command}")
        return result

    def alternate(self, name: str, *, a: tuple[str, str, Server], b: tuple[str, str, Server],
                  measure: str, connections: int, target: Target | None = None) -> Row:
        """A B A B ...: `profile.pairs` wrk runs against each side (label, url, server), after
        one untimed warm-up run of each. `measure` is "throughput" (req/s) or "latency"
        (median ms). The notes add each side's p99 and the server CPU time per request."""
        assert self.item is not None
        for _, url, server in (a, b):
            self.wrk(url, seconds=self.profile.warmup_seconds, connections=connections,
                     headers=server.headers)
        unit = "req/s" if measure == "throughput" else "ms p50"
        row = Row(item=self.item.number, name=name, a=Side(a[0], unit), b=Side(b[0], unit),
                  target=target)
        p99: dict[str, list[float]] = {a[0]: [], b[0]: []}
        cpu: dict[str, list[float]] = {a[0]: [], b[0]: []}
        for _ in range(self.profile.pairs):
            pair = []
            for side, (label, url, server) in ((row.a, a), (row.b, b)):
                before = server.cpu_seconds()
                result = self.wrk(url, seconds=self.profile.run_seconds, connections=connections,
                                  headers=server.headers)
                cpu[label].append(1e6 * (server.cpu_seconds() - before) / max(result.requests, 1))
                value = (result.requests_per_second if measure == "throughput"
                         else result.latency_ms["p50"])
                side.values.append(value)
                p99[label].append(result.latency_ms["p99"])
                pair.append(value)
            row.ratios.append(pair[0] / pair[1])
        self.log(f"{name}: {row.a.label} {row.a.median:.1f} vs {row.b.label} {row.b.median:.1f} "  # type: ignore[union-attr]
                 f"{unit}, ratio {row.ratio:.3f}")
        row.notes.append("; ".join(
            f"{label}: p99 {statistics.median(p99[label]):.2f} ms, server CPU "
            f"{statistics.median(cpu[label]):.0f} µs/request" for label in p99) + " (medians of the runs)")
        return row


def show_command(command: str) -> str:
    """wrk's command line with what changes from run to run (port, ids, cursors) as names."""
    command = re.sub(r"^\S*/wrk ", "wrk ", command)
    command = re.sub(r"Bearer nxk_[A-Za-z0-9_-]+", "Bearer $NEXUS_API_KEY", command)
    command = re.sub(r"(://[\d.]+):\d+", r"\1:$PORT", command)
    command = re.sub(r"proj_[0-9a-f]{12}", "{project_id}", command)
    return re.sub(r"last_key=[A-Za-z0-9_-]+", "last_key={cursor}", command)
