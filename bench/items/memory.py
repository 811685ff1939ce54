"""Item 7: resident memory under the locust scenario, after warm-up vs at the end."""

import csv
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.context import Context
from bench.results import Row, Side, Target
from bench.servers import REPO, base_environment

LOCUSTFILE = REPO / "tests" / "load" / "locustfile.py"
SAMPLE_SECONDS = 5.0


def _locust() -> str:
    # Installed with pip next to the interpreter, which may not be on PATH.
    path = shutil.which("locust") or shutil.which("locust", path=str(Path(sys.executable).parent))
    if path is None:
        raise RuntimeError("locust is not installed (pip install -e '.[test]')")
    return path


def steady_load(ctx: Context) -> list[Row]:
    profile = ctx.profile
    # The operator's defaults: builds take their simulated time, as in production.
    server = ctx.server("full", "memory", settings={"OFFLINE_STAGE_DELAY_SECONDS": "0.2"})
    run_seconds = round(profile.memory_warmup_seconds + profile.memory_seconds)
    csv_prefix = ctx.workdir("memory") / "locust"
    command = [_locust(), "-f", str(LOCUSTFILE), "--headless", "--users", str(profile.memory_users),
               "--spawn-rate", "10", "--run-time", f"{run_seconds}s", "--host", server.base_url,
               "--csv", str(csv_prefix), "--only-summary"]
    ctx.item.command(shlex.join(["locust", *command[1:]])  # type: ignore[union-attr]
                     .replace(str(REPO) + "/", "").replace(server.base_url, "http://127.0.0.1:$PORT")
                     .replace(str(ctx.bench_dir), "$BENCH_DIR"))
    interval = min(SAMPLE_SECONDS, profile.memory_seconds / 10)
    samples: list[tuple[float, int]] = []
    with open(ctx.workdir("memory") / "locust.out", "wb") as out:
        locust = subprocess.Popen(command, stdout=out, stderr=out, env=base_environment())
        started = time.monotonic()
        try:
            while locust.poll() is None:
                samples.append((time.monotonic() - started, server.rss_bytes()))
                time.sleep(interval)
        finally:
            if locust.poll() is None:
                locust.terminate()
            locust.wait(timeout=60)
    steady = [(t, rss) for t, rss in samples
              if profile.memory_warmup_seconds <= t <= profile.memory_warmup_seconds + profile.memory_seconds]
    if len(steady) < 2:
        raise RuntimeError(f"too few memory samples ({len(samples)}); locust exit {locust.returncode}")
    mib = 2**20
    warm, end = steady[0][1] / mib, steady[-1][1] / mib
    row = Row(item=7, name=f"RSS under the locust scenario: {profile.memory_users} users for "
                           f"{run_seconds / 60:g} min, the first {profile.memory_warmup_seconds:g} s "
                           "being the warm-up",
              a=Side("at the end", "MiB", [end]), b=Side("after warm-up", "MiB", [warm]),
              ratios=[end / warm], target=Target("<=", 1.05))
    row.notes.append(f"RSS {warm:.1f} → {end:.1f} MiB ({100 * (end / warm - 1):+.1f} %), "
                     f"peak {max(rss for _, rss in steady) / mib:.1f} MiB, "
                     f"{len(steady)} samples every {interval:g} s")
    shown = steady[::max(1, round(60 / interval))]
    if shown[-1] is not steady[-1]:
        shown.append(steady[-1])
    row.notes.append("RSS over time (MiB): " + ", ".join(f"{t:.0f} s {rss / mib:.1f}" for t, rss in shown))
    row.notes.extend(_locust_summary(csv_prefix, locust.returncode))
    ctx.log(row.notes[0])
    return [row]


def _locust_summary(csv_prefix: Path, returncode: int) -> list[str]:
    with open(f"{csv_prefix}_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    if requests == 0:
        raise RuntimeError(f"locust sent no request (exit {returncode})")
    per_route = "; ".join(
        f"{name} p50 {row['Median Response Time']} ms, p95 {row['95%']} ms"
        for name, row in sorted(rows.items()) if name != "Aggregated")
    return [f"locust: {requests:,} requests, {failures} failures, {float(total['Requests/s']):.1f} req/s, "
            f"p50 {total['Median Response Time']} ms, p95 {total['95%']} ms, p99 {total['99%']} ms "
            f"(exit {returncode})", f"by route: {per_route}"]
