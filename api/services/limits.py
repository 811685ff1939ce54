"""Rate limits and quotas of API keys (docs/SECURITY.md, "Rate limits and quotas").

Each limit holds for a tenant and for each of its keys, in every process at once, because
what counts is kept in the store (LimitStore) rather than in memory:
- requests per minute and builds per hour: counters of fixed windows (UTC minutes, hours).
  A build takes its unit from the store when it starts, exactly. A request would cost a
  store write each that way, so a process takes a share of the window's requests at a time
  (a twentieth of the limit, at least 1) and admits from it until it is used up. The store
  hands out no more than the limit in all, so the limit is never exceeded; a request may be
  refused while other processes still hold unused parts of their shares, so a window can
  admit up to (processes - 1) x the share fewer than the limit. The store is written once
  per share, about 20 times per window and scope however busy.
- invocations in flight: slots held from the request until the model call's answer is
  recorded, each expiring after the model call's deadline in case its process dies.
- model tokens per UTC day, checked before a build or an invocation starts: a tenant's are
  its statistics' (builds' and invocations' tokens, kept exact by the store), a key's are
  counted after each of its invocations. A call in flight when the quota runs out still
  finishes, so the quota can be passed by what the calls in flight spend.

Over a limit is RateLimited (429 with Retry-After and RateLimit-*). Without keys
(AUTH_MODE=none) nothing is limited: there is nobody to tell apart.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from api.config import Settings
from api.core.errors import RateLimited
from api.core.principal import Principal
from api.database.store import DAILY_FIELDS, LimitStore, StatisticsStore
from api.observability import metrics

MINUTE, HOUR, DAY = 60, 3600, 86400
SHARES_PER_WINDOW = 20
# How long a process trusts the tokens spent today that it read (its own spending is added
# at once): the quota's lag behind other processes' spending.
TOKENS_READ_SECONDS = 2.0
TOKEN_FIELDS = tuple(name for name in DAILY_FIELDS if name.endswith("_tokens"))
# Entries of a process's memory of counters or addresses, at most (then it starts afresh).
MAX_ENTRIES = 10_000


def _window(now: float, seconds: int) -> tuple[int, int]:
    """The window holding `now`: its start, and the seconds until it ends (at least 1)."""
    start = int(now // seconds) * seconds
    return start, max(1, math.ceil(start + seconds - now))


@dataclass(slots=True)
class _Share:
    """The part of one counter's window this process took from the store, and used."""

    granted: int = 0
    used: int = 0
    total: int = 0  # the counter in the store after this process's last take
    exhausted: bool = False


@dataclass(frozen=True, slots=True)
class _Scope:
    """One scope a limit holds for: the tenant, or one key (`name` is the key's counter
    prefix)."""

    scope: str
    name: str
    limit: int


class Limits:
    def __init__(self, *, store: LimitStore, statistics: StatisticsStore, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.statistics = statistics
        self.settings = settings
        self.clock = clock
        # By (tenant, counter): a tenant's counters are named alike in every tenant.
        self._shares: dict[tuple[str, str], _Share] = {}
        self._shares_window = 0
        self._tokens: dict[tuple[str, str], tuple[int, float]] = {}  # -> (spent, read at)

    def _scopes(self, principal: Principal, what: str, tenant_limit: int,
                key_limit: int) -> list[_Scope]:
        """The limits of `what` that hold for the principal: none without a key."""
        if principal.key_id is None or principal.tenant_id is None:
            return []
        scopes = [_Scope("key", f"{what}:key:{principal.key_id}", key_limit),
                  _Scope("tenant", f"{what}:tenant", tenant_limit)]
        return [scope for scope in scopes if scope.limit > 0]

    @staticmethod
    def _refuse(what: str, scope: _Scope, per: str, retry_after: int) -> RateLimited:
        metrics.record_rate_limited(limit=what, scope=scope.scope)
        return RateLimited(what=what, scope=scope.scope, limit=scope.limit, per=per,
                           retry_after=retry_after)

    # -- requests per minute -------------------------------------------------------------
    async def admit_request(self, principal: Principal) -> dict[str, str]:
        """Count one request; the RateLimit-* headers of the tightest limit, or RateLimited."""
        settings = self.settings
        scopes = self._scopes(principal, "requests", settings.tenant_requests_per_minute,
                              settings.key_requests_per_minute)
        if not scopes:
            return {}
        now = self.clock()
        start, reset = _window(now, MINUTE)
        if start != self._shares_window:
            self._shares, self._shares_window = {}, start
        admitted: list[_Share] = []
        headers: dict[str, str] = {}
        tightest = None
        for scope in scopes:
            share = await self._take(principal, f"{scope.name}:{start}", scope.limit, now, start)
            if share is None:
                for taken in admitted:
                    taken.used -= 1  # given back to this process's share, never to the store
                raise self._refuse("requests", scope, "per minute", reset)
            admitted.append(share)
            remaining = scope.limit - share.total + share.granted - share.used
            if tightest is None or remaining < tightest:
                tightest = remaining
                headers = {"RateLimit-Limit": str(scope.limit),
                           "RateLimit-Remaining": str(max(0, remaining)),
                           "RateLimit-Reset": str(reset)}
        return headers

    async def _take(self, principal: Principal, counter: str, limit: int, now: float,
                    start: int) -> _Share | None:
        assert principal.tenant_id is not None  # a key's principal (Limits._scopes)
        share = self._shares.setdefault((principal.tenant_id, counter), _Share())
        if share.used >= share.granted:
            if share.exhausted:
                return None
            size = max(1, math.ceil(limit / SHARES_PER_WINDOW))
            taken, share.total = await self.store.take_allowance(
                tenant_id=principal.tenant_id, counter=counter, amount=size, limit=limit,
                now=now, expires_at=start + 2 * MINUTE)
            share.granted += taken
            if share.used >= share.granted:
                # The store's counter only grows within its window: it stays full.
                share.exhausted = True
                return None
        share.used += 1
        return share

    # -- builds per hour -----------------------------------------------------------------
    async def admit_build(self, principal: Principal) -> None:
        """Count a build about to start (a new project, a restart), or RateLimited; also
        refused when the tokens of the day are spent."""
        await self.check_tokens(principal)
        settings = self.settings
        now = self.clock()
        start, reset = _window(now, HOUR)
        taken: list[str] = []
        for scope in self._scopes(principal, "builds", settings.tenant_builds_per_hour,
                                  settings.key_builds_per_hour):
            counter = f"{scope.name}:{start}"
            granted, _ = await self.store.take_allowance(
                tenant_id=principal.tenant_id, counter=counter, amount=1, limit=scope.limit,
                now=now, expires_at=start + 2 * HOUR)
            if not granted:
                for earlier in taken:
                    await self.store.take_allowance(tenant_id=principal.tenant_id,
                                                    counter=earlier, amount=-1, limit=None,
                                                    now=now, expires_at=start + 2 * HOUR)
                raise self._refuse("builds", scope, "per hour", reset)
            taken.append(counter)

    # -- invocations in flight -----------------------------------------------------------
    async def hold_invocation(self, principal: Principal, invocation_id: str,
                              deadline_seconds: float) -> list[str]:
        """Hold a slot of each limit for the invocation (released by release_invocation,
        else freed `deadline_seconds` from now); the pools held, or RateLimited."""
        settings = self.settings
        await self.check_tokens(principal)
        now = self.clock()
        held: list[str] = []
        for scope in self._scopes(principal, "invocations", settings.tenant_invocations_in_flight,
                                  settings.key_invocations_in_flight):
            if not await self.store.acquire_slot(
                    tenant_id=principal.tenant_id, pool=scope.name, slot_id=invocation_id,
                    limit=scope.limit, now=now, expires_at=now + deadline_seconds):
                await self.release_invocation(principal, invocation_id, held)
                raise self._refuse("invocations", scope, "in flight", 1)
            held.append(scope.name)
        return held

    async def release_invocation(self, principal: Principal, invocation_id: str,
                                 pools: list[str]) -> None:
        for pool in pools:
            await self.store.release_slot(tenant_id=principal.tenant_id, pool=pool,
                                          slot_id=invocation_id)

    # -- model tokens per day ------------------------------------------------------------
    async def check_tokens(self, principal: Principal) -> None:
        settings = self.settings
        for scope in self._scopes(principal, "tokens", settings.tenant_tokens_per_day,
                                  settings.key_tokens_per_day):
            if await self._spent(principal, scope) >= scope.limit:
                raise self._refuse("tokens", scope, "per day", _window(self.clock(), DAY)[1])

    async def spend_tokens(self, principal: Principal, tokens: int) -> None:
        """Count an invocation's tokens against its key's quota (the tenant's counts them in
        its statistics already), and against this process's view of both."""
        if tokens <= 0:
            return
        for scope in self._scopes(principal, "tokens", self.settings.tenant_tokens_per_day,
                                  self.settings.key_tokens_per_day):
            counter = self._token_counter(scope)
            cached = (principal.tenant_id, counter)
            if scope.scope == "key":
                now = self.clock()
                _, spent = await self.store.take_allowance(
                    tenant_id=principal.tenant_id, counter=counter, amount=tokens, limit=None,
                    now=now, expires_at=_window(now, DAY)[0] + 2 * DAY)
                self._tokens[cached] = (spent, now)
            elif cached in self._tokens:
                spent, read_at = self._tokens[cached]
                self._tokens[cached] = (spent + tokens, read_at)

    def _token_counter(self, scope: _Scope) -> str:
        return f"{scope.name}:{_window(self.clock(), DAY)[0]}"

    async def _spent(self, principal: Principal, scope: _Scope) -> int:
        counter = self._token_counter(scope)
        now = self.clock()
        cached = self._tokens.get((principal.tenant_id, counter))
        if cached is not None and now - cached[1] < TOKENS_READ_SECONDS:
            return cached[0]
        if scope.scope == "key":
            _, spent = await self.store.take_allowance(
                tenant_id=principal.tenant_id, counter=counter, amount=0, limit=None, now=now,
                expires_at=_window(now, DAY)[0] + 2 * DAY)
        else:
            today = datetime.fromtimestamp(now, UTC).date().isoformat()
            days = await self.statistics.get_daily(tenant_id=principal.tenant_id, start=today,
                                                   end=today)
            spent = int(sum(day.counts.get(name, 0) for day in days for name in TOKEN_FIELDS))
        if len(self._tokens) >= MAX_ENTRIES:
            self._tokens.clear()
        self._tokens[(principal.tenant_id, counter)] = (spent, now)
        return spent


class FailedAuthentications:
    """Failed authentications per client address in this process's current minute: past
    AUTH_FAILURES_PER_MINUTE an address is answered 429 instead of 401 until the minute
    ends. Kept per process (a guard against noise and guessing, not a quota): with N
    processes an address gets up to N times the limit."""

    def __init__(self, *, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._window = 0
        self._counts: dict[str, int] = {}

    def record(self, address: str) -> RateLimited | None:
        """Count a failure of `address`; the refusal to answer instead of 401, if over."""
        if self.per_minute <= 0:
            return None
        start, reset = _window(self.clock(), MINUTE)
        if start != self._window or len(self._counts) >= MAX_ENTRIES:
            self._counts, self._window = {}, start
        count = self._counts[address] = self._counts.get(address, 0) + 1
        if count <= self.per_minute:
            return None
        metrics.record_rate_limited(limit="auth_failures", scope="address")
        return RateLimited(what="failed authentications", scope="address",
                           limit=self.per_minute, per="per minute", retry_after=reset)
