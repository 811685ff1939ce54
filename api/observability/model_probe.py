"""Whether the model endpoint answers, probed in the background for `/health/detailed`.

Every `interval_seconds` (30 s) one `list_models` call, bounded by `timeout_seconds` (5 s), and
its result cached: a health request reads the cache and never waits on the model endpoint, and
however often `/health/detailed` is polled the endpoint sees one call per interval per worker.
The first probe runs as soon as `start()` is called; until it has answered the status is
`configured`. The offline provider has no endpoint: it reports `offline` and nothing is probed.

Readiness (`/health/ready`) does not depend on this, on purpose. A hosted model that is slow or
down is down for every replica at once: failing readiness would take them all out of the load
balancer, which would also stop the probes, session reads and control actions that need no
model, and no replica can fix someone else's endpoint. Model failures show where they happen
instead: as failed stages and invocations, in `model_requests_total` and the
`ModelErrorRateHigh` alert.

Nor does an unreachable model make `/health/detailed` say `degraded`: that status means the
service itself cannot serve (its database is gone), which is how whoever reads it
(`deploy.sh status`, a dashboard, a status page) takes it. The model's state sits next to the
database's, with its own status.

The API key never shows: the endpoint is reported without userinfo, query or fragment, and
the message of a failed probe is masked like a log line, with the endpoint's userinfo removed.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from api.core.clock import utc_now
from api.core.redaction import MASK, redact_text

logger = logging.getLogger(__name__)

Status = Literal["configured", "reachable", "unreachable", "offline"]
OFFLINE_PROVIDER = "offline"
INTERVAL_SECONDS = 30.0
TIMEOUT_SECONDS = 5.0
# An endpoint's error can carry a whole response body; the health check shows the start.
MESSAGE_CHARACTERS = 300


def display_endpoint(url: str | None) -> str | None:
    """`url` as it is safe to show: scheme, host, port and path only."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal loses its brackets in hostname
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def offline_report(models: Mapping[str, str]) -> dict[str, Any]:
    """The offline provider's state: no endpoint to check."""
    return {"status": "offline", "provider": OFFLINE_PROVIDER, "models": dict(models),
            "endpoint": None, "checked_at": None, "latency_ms": None,
            "message": "The offline provider calls no model endpoint"}


def _userinfo_secret(url: str | None) -> str | None:
    """The secret part of `url`'s userinfo: the password, or a lone user part (a token)."""
    if not url:
        return None
    parts = urlsplit(url)
    return parts.password or parts.username


class ModelProbe:
    """The cached state of the model endpoint.

    `list_models` is the provider's model listing (`ModelClient.list_models`); `endpoint` the
    base URL the provider talks to, credentials and all (only its safe form is shown); `models`
    the model of each operation (`{"build": ..., "invoke": ...}`).
    """

    def __init__(self, *, list_models: Callable[[], Awaitable[list[str]]], provider: str,
                 endpoint: str | None, models: Mapping[str, str],
                 interval_seconds: float = INTERVAL_SECONDS,
                 timeout_seconds: float = TIMEOUT_SECONDS) -> None:
        self._list_models = list_models
        self._interval_seconds = interval_seconds
        self._timeout_seconds = timeout_seconds
        self._secret = _userinfo_secret(endpoint)
        self._task: asyncio.Task[None] | None = None
        self._report: dict[str, Any] = offline_report(models) if provider == OFFLINE_PROVIDER else {
            "status": "configured", "provider": provider, "models": dict(models),
            "endpoint": display_endpoint(endpoint), "checked_at": None, "latency_ms": None,
            "message": "The model endpoint has not been checked yet",
        }

    @property
    def status(self) -> Status:
        return self._report["status"]

    def snapshot(self) -> dict[str, Any]:
        """The latest result, without waiting for anything."""
        return {**self._report, "models": dict(self._report["models"])}

    def start(self) -> None:
        """Probe now, then every interval, until `stop()`; the offline provider is not probed."""
        if self.status == "offline" or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="model-probe")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def probe(self) -> None:
        """One probe; its result replaces the cached one."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_seconds):
                listed = await self._list_models()
        except TimeoutError:
            status: Status = "unreachable"
            message = f"The model endpoint did not answer within {self._timeout_seconds:g} s"
        except Exception as exc:  # whatever the SDK raised, the endpoint cannot be used: say why
            status, message = "unreachable", f"The model endpoint failed: {self._safe(exc)}"
        else:
            status, message = "reachable", f"The model endpoint answered with {len(listed)} model(s)"
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        previous = self.status
        # One assignment, so a reader never sees half of a result.
        self._report = {**self._report, "status": status, "checked_at": utc_now(),
                        "latency_ms": latency_ms, "message": message}
        if status != previous:
            level = logging.WARNING if status == "unreachable" else logging.INFO
            logger.log(level, "Model endpoint %s", status, extra={
                "provider": self._report["provider"], "endpoint": self._report["endpoint"],
                "latency_ms": latency_ms, "detail": message})

    async def _run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self._interval_seconds)

    def _safe(self, exc: Exception) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, MASK)
        text = redact_text(text)
        if len(text) > MESSAGE_CHARACTERS:
            text = text[:MESSAGE_CHARACTERS] + "…"
        return text
