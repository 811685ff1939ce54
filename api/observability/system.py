"""Host and process figures, sampled by a background thread so that no request reads /proc."""

import threading
import time

import psutil

from api.observability import metrics

SAMPLE_SECONDS = 5.0


class SystemSampler:
    def __init__(self) -> None:
        self._process = psutil.Process()
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
        # psutil's CPU percentages are measured between two calls: the first one only primes.
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)
        self._sample()
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        with self._process.oneshot():
            rss = self._process.memory_info().rss
            process_memory_percent = self._process.memory_percent()
            process_cpu_percent = self._process.cpu_percent(interval=None)
        # One assignment, so a reader never sees half of a sample.
        self._figures = {
            "cpu_percent": round(psutil.cpu_percent(interval=None), 1),
            "memory_percent": round(psutil.virtual_memory().percent, 1),
            "process_memory_mb": round(rss / 1024 / 1024, 1),
        }
        metrics.process_memory_percent.set(process_memory_percent)
        metrics.process_cpu_percent.set(process_cpu_percent)


sampler = SystemSampler()
