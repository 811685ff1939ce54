"""Request tracing: request id, response time, the access line, HTTP metrics, the last-resort 500.

Plain ASGI, outermost of the app's middleware, so that every response, including 404, 405,
413 and unhandled exceptions, carries X-Request-ID and X-Response-Time, and the request id is
in context for every line logged while the request is served (the client's address too, for
the audit trail's lines).
"""

import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.config import Settings
from api.core.context import client_address_var, request_id_var
from api.core.envelope import EnvelopeResponse, internal_error_body
from api.observability import logging as json_logging
from api.observability import metrics

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

logger = logging.getLogger(__name__)


def request_id_from(scope: Scope) -> str:
    """The client's X-Request-ID when it is safe to log and echo, else a new uuid4."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    # uuid.uuid4() reads os.urandom on every call, a syscall that costs more than the rest of
    # this middleware; ids need to be unique, not unguessable (random reseeds after fork).
    bits = random.getrandbits(128) & ~(0xF000 << 64 | 0xC000 << 48) | (0x4000 << 64 | 0x8000 << 48)
    hexa = f"{bits:032x}"
    return f"{hexa[:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:]}"


def route_template(scope: Scope) -> str:
    """The matched route's template, e.g. /api/v1/projects/{project_id}.

    FastAPI keeps an included router's routes under their own prefix only; the full template
    of the match is on its effective route context.
    """
    effective = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(effective, "path_format", None) or getattr(scope.get("route"), "path_format", None)
    if template is None and "endpoint" in scope:
        # Starlette's plain routes (FastAPI's /openapi.json) and mounts (the docs pages' static
        # files: one template for them all) leave only their endpoint in the scope, which for
        # a mount is its app.
        template = next((route.path_format for route in scope["app"].routes
                         if getattr(route, "endpoint", getattr(route, "app", None))
                         is scope["endpoint"]), None)
    return template or metrics.UNMATCHED_ROUTE


class TracingMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.debug = settings.debug
        self.log_health_requests = settings.log_health_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        start = time.perf_counter()
        request_id = request_id_from(scope)
        token = request_id_var.set(request_id)
        client = scope.get("client")
        client_address = client[0] if client else None
        address_token = client_address_var.set(client_address)
        path = scope["path"]
        counted = not metrics.is_excluded(path)
        probe = path == "/health" or path.startswith("/health/")
        status = 500  # what the client gets if the app ends without answering
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                    # Time to the response's start: headers leave before any (streamed) body.
                    (b"x-response-time", f"{time.perf_counter() - start:.6f}".encode()),
                ]
            await send(message)

        if counted:
            metrics.http_requests_in_progress.inc()
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            logger.error("Unhandled exception", exc_info=exc,
                         extra={"method": scope["method"], "path": path})
            if not response_started:
                # Answered here rather than re-raised, so that Starlette's ServerErrorMiddleware
                # never answers without our headers and envelope.
                response = EnvelopeResponse(internal_error_body(exc, debug=self.debug), status_code=500)
                await response(scope, receive, send_with_headers)
        finally:
            duration = time.perf_counter() - start
            route = route_template(scope)
            if counted:
                metrics.http_requests_in_progress.dec()
                metrics.record_request(method=scope["method"], route=route, status=status,
                                       seconds=duration)
            # A probe every few seconds would drown the access log; failing probes still show.
            if not probe or status >= 400 or self.log_health_requests:
                json_logging.log_access(
                    request_id=request_id, method=scope["method"], path=path, route=route,
                    status_code=status, duration_seconds=round(duration, 6),
                    client_address=client_address)
            request_id_var.reset(token)
            client_address_var.reset(address_token)
