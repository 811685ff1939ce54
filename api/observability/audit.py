"""The audit trail: one JSON line in LOG_DIR/audit.log per act an operator must be able to
trace (docs/SECURITY.md, "Audit trail"): keys made and revoked, failed authentications, denied
requests, control actions, deletes and agent status changes.

The lines go through the log pipeline like every other (api.observability.logging: formatted
in the thread that acts, a bounded queue, a writer thread, reopened after rotation), from the
`nexus_ai.audit` logger, which does not propagate: they reach audit.log (and stdout with
LOG_STDOUT) and never the app's files, whatever LOG_LEVEL says. Each line names who acted
(tenant, user, key, role, address), what (action, target), how it ended (outcome, error code)
and the request (its id, the X-Request-ID of the answer).

Refusals come from anyone who can reach the port, so their lines are bounded: at most one per
client address and reason (failed authentications) or per key and action (denials) every
AUDIT_REFUSAL_WINDOW_SECONDS in each process; the refusals a window suppressed are written as
one line with their count once the window is over (or at shutdown).
"""

import asyncio
import getpass
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from api.core.context import client_address_var, request_id_var
from api.core.errors import ApiError
from api.core.principal import Principal
from api.core.store_errors import StoreError

AUDIT_LOGGER = "nexus_ai.audit"
# The `role` of what `nexus-ai keys` does: the command line manages every tenant's keys.
COMMAND_LINE_ROLE = "cli"
# Refusal windows one process tracks at once; beyond them refusals are counted together,
# under the address (or key) "*".
MAX_TRACKED_REFUSALS = 10_000
# A target id taken from a refused request's path is the caller's text: this much of it.
MAX_TARGET_ID = 200

# The outcome of an act that raised, by the error code it is answered with; any other code is
# `failed`.
OUTCOMES = {"RESOURCE_NOT_FOUND": "not_found", "AUTHENTICATION_REQUIRED": "denied",
            "PERMISSION_DENIED": "denied"}

# The audited operations a key's role may be refused (403, api.middleware.auth, before the
# body is read: a refused control action is `project.control`), with the type of the resource
# the path names.
_REFUSABLE = (
    ("DELETE", re.compile(r"/api/v1/projects/([^/]+)"), "project.delete", "project"),
    ("PUT", re.compile(r"/api/v1/projects/([^/]+)/control"), "project.control", "project"),
    ("DELETE", re.compile(r"/api/v1/agents/([^/]+)"), "agent.delete", "agent"),
    ("PUT", re.compile(r"/api/v1/agents/([^/]+)/status"), "agent.status", "agent"),
    ("DELETE", re.compile(r"/api/v1/sessions/([^/]+)"), "session.delete", "session"),
    ("POST", re.compile(r"/api/v1/keys()"), "key.create", "key"),
    ("DELETE", re.compile(r"/api/v1/keys/([^/]+)"), "key.revoke", "key"),
)

_logger = logging.getLogger(AUDIT_LOGGER)


# -- lines -------------------------------------------------------------------------------------
def _actor(principal: Principal) -> dict[str, Any]:
    return {"tenant_id": principal.tenant_id, "user_id": principal.user_id,
            "key_id": principal.key_id, "role": principal.role}


_NOBODY = {"tenant_id": None, "user_id": None, "key_id": None, "role": None}


def _write(fields: dict[str, Any], *, request_id: str | None = None) -> None:
    """One audit line: the request's id and address, then `fields` (action, outcome, ...)."""
    outcome = fields["outcome"]
    if "suppressed" in fields:
        message = (f"{fields['action']}: {outcome} {fields['suppressed']} more times in "
                   f"{fields['window_seconds']:g} s")
    else:
        message = f"{fields['action']}: {outcome}"
    _logger.log(logging.INFO if outcome == "success" else logging.WARNING, message, extra={
        "request_id": request_id, "client_address": client_address_var.get(), **fields})


def record(action: str, *, principal: Principal, outcome: str, target_type: str | None,
           target_id: str | None, tenant_id: str | None, error_code: str | None = None,
           details: dict[str, Any] | None = None) -> None:
    """Write one act's line; `tenant_id` is the tenant it acted on (an operator's, or the
    command line's, has none of its own)."""
    fields = {**_actor(principal), "tenant_id": tenant_id, "action": action,
              "target": None if target_type is None else {"type": target_type, "id": target_id},
              "outcome": outcome}
    if outcome != "success":
        fields["error_code"] = error_code
    if details:
        fields["details"] = details
    _write(fields, request_id=request_id_var.get())


@dataclass
class AuditedAct:
    """What `audited` writes; the code inside fills in what it learns (a new key's id)."""

    target_id: str | None
    tenant_id: str | None
    details: dict[str, Any] | None


def _error_code(exc: BaseException) -> str:
    """The code the act's failure is answered with (api.core.handlers): the API's and the
    store's errors carry theirs."""
    if isinstance(exc, (ApiError, StoreError)):
        return exc.code
    if isinstance(exc, ValueError):
        return "VALIDATION_ERROR"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "INTERNAL_ERROR"


@contextmanager
def audited(action: str, *, principal: Principal, target_type: str, target_id: str | None = None,
            details: dict[str, Any] | None = None) -> Iterator[AuditedAct]:
    """Write the line of the act done inside: `success`, or the outcome of what it raised
    (which goes on: the error handlers answer it)."""
    act = AuditedAct(target_id=target_id, tenant_id=principal.tenant_id, details=details)

    def write(outcome: str, error_code: str | None = None) -> None:
        record(action, principal=principal, outcome=outcome, target_type=target_type,
               target_id=act.target_id, tenant_id=act.tenant_id, error_code=error_code,
               details=act.details)

    try:
        yield act
    except BaseException as exc:
        code = _error_code(exc)
        write(OUTCOMES.get(code, "failed"), code)
        raise
    write("success")


def command_line() -> Principal:
    """Who acts through `nexus-ai keys`: the operating system's user of the process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid without a passwd entry
        user = str(os.getuid())
    return Principal(tenant_id=None, role=COMMAND_LINE_ROLE, user_id=f"cli:{user}")


# -- refusals, bounded -------------------------------------------------------------------------
class Throttle:
    """At most one line per key per window: the first refusal of a window gets its line, the
    others are counted, and the count comes out when the window is over.

    Windows are kept oldest first, so the ended ones are found at the front: a refusal costs
    O(1) however many windows are open. Beyond `max_keys` open windows a refusal counts under
    its `overflow` key, so memory stays bounded whatever the number of addresses."""

    def __init__(self, *, window_seconds: float, max_keys: int = MAX_TRACKED_REFUSALS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [window start, refusals suppressed, the fields of the line that counts them]
        self._windows: OrderedDict[Hashable, list[Any]] = OrderedDict()

    def admit(self, key: Hashable, summary: dict[str, Any], *,
              overflow: tuple[Hashable, dict[str, Any]]) -> tuple[bool, list[dict[str, Any]]]:
        """Whether this refusal gets its line, and the count lines of the windows that ended."""
        now = self.clock()
        with self._lock:
            ended = self._ended(now)
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self.max_keys:
                key, summary = overflow
                window = self._windows.get(key)
            if window is not None:
                window[1] += 1
                return False, ended
            self._windows[key] = [now, 0, summary]
            return True, ended

    def _ended(self, now: float) -> list[dict[str, Any]]:
        ended = []
        while self._windows:
            key, (start, suppressed, summary) = next(iter(self._windows.items()))
            if now - start < self.window_seconds:
                break
            del self._windows[key]
            if suppressed:
                ended.append(self._count_line(summary, suppressed))
        return ended

    def drain(self) -> list[dict[str, Any]]:
        """The count lines of every open window (shutdown), which are closed."""
        with self._lock:
            ended = [self._count_line(summary, suppressed)
                     for _, suppressed, summary in self._windows.values() if suppressed]
            self._windows.clear()
        return ended

    def _count_line(self, summary: dict[str, Any], suppressed: int) -> dict[str, Any]:
        return {**summary, "suppressed": suppressed, "window_seconds": self.window_seconds}


_refusals = Throttle(window_seconds=60.0)


def configure(*, refusal_window_seconds: float) -> None:
    """A new process or app: refusals counted afresh, in windows of this length."""
    global _refusals
    _refusals = Throttle(window_seconds=refusal_window_seconds)


def _refused(key: Hashable, line: dict[str, Any], summary: dict[str, Any],
             overflow: tuple[Hashable, dict[str, Any]]) -> None:
    admitted, ended = _refusals.admit(key, summary, overflow=overflow)
    for count_line in ended:
        # The count of refusals made by other requests: no request id, and (with the address
        # in the fields) not this request's address either.
        _write(count_line)
    if admitted:
        _write(line, request_id=request_id_var.get())


def authentication_failed(*, reason: str, error_code: str) -> None:
    """A refusal for no key, or a malformed, unknown, revoked or expired one (`reason`):
    401 AUTHENTICATION_REQUIRED, or RATE_LIMIT_EXCEEDED once its address failed too often."""
    address = client_address_var.get()
    fields = {**_NOBODY, "action": "authenticate", "target": None, "outcome": "denied",
              "error_code": error_code, "reason": reason}
    summary = {**fields, "client_address": address}
    _refused(("authenticate", address, reason), fields, summary,
             overflow=(("authenticate", "*", reason), {**summary, "client_address": "*"}))


def permission_denied(*, principal: Principal, method: str, path: str) -> None:
    """A 403 of a key whose role does not cover the request, when the request is an audited
    act (a delete, a control action, an agent status change, key management)."""
    for refusable_method, pattern, action, target_type in _REFUSABLE:
        match = pattern.fullmatch(path) if method == refusable_method else None
        if match is not None:
            break
    else:
        return
    fields = {**_actor(principal), "action": action,
              "target": {"type": target_type, "id": match.group(1)[:MAX_TARGET_ID] or None},
              "outcome": "denied", "error_code": "PERMISSION_DENIED"}
    actor = principal.key_id or principal.user_id
    summary = {**fields, "target": None, "client_address": client_address_var.get()}
    _refused(("denied", actor, action), fields, summary,
             overflow=(("denied", "*", action), {**summary, **_NOBODY, "client_address": "*"}))


def flush() -> None:
    """At shutdown: write the counts of the refusals still suppressed."""
    for count_line in _refusals.drain():
        _write(count_line)
