"""Host and process figures, sampled by a background thread so that no request reads /proc."""

import threading
import time
from pathlib import Path

import psutil

from api.observability import metrics

SAMPLE_SECONDS = 5.0
# A CPU percentage measured over microseconds is noise (seen: 1500 %); the first sample waits.
FIRST_SAMPLE_SECONDS = 1.0
CGROUP_MEMORY_LIMITS = (Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
                        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))  # cgroup v1


def memory_available_bytes() -> int:
    """What the process may use: the container's memory limit when there is one, else the
    host's memory. HighMemoryUsage must fire before the OOM killer, not at 80 % of the host."""
    host = psutil.virtual_memory().total
    for path in CGROUP_MEMORY_LIMITS:
        try:
            limit = path.read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            return min(int(limit), host)
    return host


class SystemSampler:
    def __init__(self) -> None:
        self._process = psutil.Process()
        self._memory_available = memory_available_bytes()
        self._started_at = self._process.create_time()
        self._figures = {"cpu_percent": 0.0, "memory_percent": 0.0, "process_memory_mb": 0.0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="system-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def snapshot(self) -> dict[str, float | int]:
        """The latest sample; CPU figures are averages over the last sampling interval."""
        return {**self._figures, "uptime_seconds": int(time.time() - self._started_at)}

    def _run(self) -> None:
        # psutil's CPU percentages are measured between two calls: the first one only primes,
        # so the first sample has memory figures at once and CPU figures a moment later.
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)
        self._sample(with_cpu=False)
        if self._stop.wait(FIRST_SAMPLE_SECONDS):
            return
        self._sample()
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def _sample(self, with_cpu: bool = True) -> None:
        with self._process.oneshot():
            rss = self._process.memory_info().rss
            process_cpu_percent = self._process.cpu_percent(interval=None) if with_cpu else 0.0
        # One assignment, so a reader never sees half of a sample.
        self._figures = {
            "cpu_percent": round(psutil.cpu_percent(interval=None), 1) if with_cpu else 0.0,
            "memory_percent": round(psutil.virtual_memory().percent, 1),
            "process_memory_mb": round(rss / 1024 / 1024, 1),
        }
        metrics.process_memory_percent.set(100.0 * rss / self._memory_available)
        metrics.process_cpu_percent.set(process_cpu_percent)


sampler = SystemSampler()
