"""Where every timed store call is reported: figures for /health/detailed and the db metrics."""

import threading
import time
from dataclasses import dataclass, field

from api.observability import metrics


@dataclass
class DatabaseFigures:
    started_at: float = field(default_factory=time.monotonic)
    succeeded: int = 0
    failed: int = 0
    slow: int = 0
    throttle_retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict[str, float | int]:
        with self.lock:
            total = self.succeeded + self.failed
            elapsed = max(time.monotonic() - self.started_at, 1e-9)
            return {
                "queries_succeeded": self.succeeded,
                "queries_failed": self.failed,
                "query_success_rate": round(100.0 * self.succeeded / total, 2) if total else 100.0,
                "queries_per_second": round(total / elapsed, 3),
                "slow_queries": self.slow,
                "throttle_retries": self.throttle_retries,
            }


figures = DatabaseFigures()


def observe(*, operation: str, seconds: float, ok: bool, slow: bool) -> None:
    metrics.record_db_operation(operation=operation, seconds=seconds, ok=ok, slow=slow)
    with figures.lock:
        if ok:
            figures.succeeded += 1
        else:
            figures.failed += 1
        if slow:
            figures.slow += 1


def observe_throttle_retry() -> None:
    """The database throttled a request and the client retried it (DynamoDB)."""
    metrics.record_db_throttle_retry()
    with figures.lock:
        figures.throttle_retries += 1
