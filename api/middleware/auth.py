"""Who may do what: every request's principal, decided once, before anything else reads it.

With AUTH_MODE=none (the development default, served on loopback only) every request is the
default tenant's admin, unnamed: records keep the `user_id` their bodies name. With
AUTH_MODE=api_key:
- the probes (`/health`, `/health/live`, `/health/ready`) stay open, for orchestrators;
- the operations endpoints (`/health/detailed`, `/metrics`, `/docs`, `/redoc`,
  `/openapi.json` and the pages' files) need an operator key, or OPERATOR_TOKEN (Prometheus);
- everything else needs a key (`Authorization: Bearer <key>` or `X-API-Key: <key>`) whose role
  covers the request (`required_role`); an operator key reads the platform-wide statistics
  and nothing else of the API.
The principal goes into the request's scope (`state.principal`), where the dependencies and
the idempotency middleware read it, and its tenant and user into the log context. A key's
request counts against its requests-per-minute limits (api.services.limits) here, before
anything else runs, and its answer carries the RateLimit-* headers of the tightest; an
address that keeps failing to authenticate is answered 429 instead of 401.
"""

import hmac

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.config import Settings
from api.core.context import bind
from api.core.envelope import error_response
from api.core.errors import RateLimited
from api.core.handlers import api_error_response, store_error_response
from api.core.principal import OPERATOR, PROBES, Principal
from api.core.store_errors import StoreError
from api.database.store import DEFAULT_TENANT
from api.observability import audit, metrics
from api.services.keys import AuthenticationFailed, KeyService
from api.services.limits import FailedAuthentications, Limits

OPERATIONS = frozenset({"/health/detailed", "/metrics", "/docs", "/docs/oauth2-redirect",
                        "/redoc", "/openapi.json"})
OPERATIONS_PREFIXES = ("/docs/static/",)
OPERATOR_STATISTICS = "/api/v1/statistics/"
# What every request is without keys.
UNAUTHENTICATED = Principal(tenant_id=DEFAULT_TENANT, role="admin", user_id=None)
# OPERATOR_TOKEN: Prometheus's scrape credential, an operator without a key.
OPERATOR_TOKEN_PRINCIPAL = Principal(tenant_id=None, role=OPERATOR, user_id="operator-token")
# A 401's message, by the reason auth_failures_total counts it under.
REFUSALS = {
    "missing": "This request needs an API key: send Authorization: Bearer <key> or X-API-Key.",
    "malformed": "The API key is not one this service issues (nxk_<key id>_<secret>).",
    "unknown": "The API key is not valid.",
    "revoked": "The API key was revoked.",
    "expired": "The API key has expired.",
}


def required_role(method: str, path: str) -> str:
    """The tenant role an API request needs: reading is a viewer's; creating, controlling,
    invoking and writing sessions a builder's; deleting, setting an agent's status and
    managing keys an admin's (docs/SECURITY.md)."""
    if path.startswith("/api/v1/keys"):
        return "admin"
    if method in ("GET", "HEAD"):
        return "viewer"
    if method == "DELETE" or (method == "PUT" and path.startswith("/api/v1/agents/")
                              and path.endswith("/status")):
        return "admin"
    return "builder"


def _credential(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    """`send`, adding `headers` to the response's start."""
    extra = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return sending


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        principal = UNAUTHENTICATED
        if state.settings.auth_mode == "api_key" and scope["path"] not in PROBES:
            decided = await self._principal(scope, state.key_service, state.settings)
            if not isinstance(decided, Principal):
                await decided(scope, receive, send)
                return
            principal = decided
        scope.setdefault("state", {})["principal"] = principal
        try:
            headers = await state.limits.admit_request(principal)
        except RateLimited as refused:
            await api_error_response(refused)(scope, receive, send)
            return
        except StoreError as exc:
            await store_error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, _with_headers(send, headers) if headers else send)

    async def _principal(self, scope: Scope, keys: KeyService,
                         settings: Settings) -> Principal | Response:
        """The request's principal, or the error response to answer instead."""
        path, method = scope["path"], scope["method"]
        operations = path in OPERATIONS or path.startswith(OPERATIONS_PREFIXES)
        token = _credential(scope)
        if not token:
            return self._refuse(scope, "missing" if token is None else "malformed")
        operator_token = settings.operator_token
        if (operations and operator_token is not None
                and hmac.compare_digest(token.encode(), operator_token.get_secret_value().encode())):
            bind(user_id=OPERATOR_TOKEN_PRINCIPAL.user_id)
            return OPERATOR_TOKEN_PRINCIPAL
        try:
            principal = await keys.authenticate(token)
        except AuthenticationFailed as failed:
            return self._refuse(scope, failed.reason)
        except StoreError:
            return error_response("DATABASE_ERROR", "The database could not check the API key.")
        # Every line of the request names the key's user, its refusal too.
        bind(tenant_id=principal.tenant_id, user_id=principal.user_id)
        if operations or principal.role == OPERATOR:
            allowed = principal.role == OPERATOR and (
                operations or (method in ("GET", "HEAD") and path.startswith(OPERATOR_STATISTICS)))
            needed = OPERATOR if operations else "a tenant's role"
        else:
            needed = required_role(method, path)
            allowed = principal.may(needed)
        if not allowed:
            audit.permission_denied(principal=principal, method=method, path=path)
            return error_response("PERMISSION_DENIED", f"This key's role ({principal.role}) may not "
                                  f"{method} {path}: it needs {needed}.")
        return principal

    def _refuse(self, scope: Scope, reason: str) -> Response:
        metrics.record_auth_failure(reason=reason)
        failures: FailedAuthentications = scope["app"].state.failed_authentications
        client = scope.get("client")
        over = failures.record(client[0] if client else "unknown")
        audit.authentication_failed(reason=reason,
                                    error_code="AUTHENTICATION_REQUIRED" if over is None else over.code)
        if over is not None:
            return api_error_response(over)
        return error_response("AUTHENTICATION_REQUIRED", REFUSALS[reason],
                              headers={"WWW-Authenticate": 'Bearer realm="nexus-ai"'})
