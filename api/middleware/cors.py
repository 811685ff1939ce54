"""Browser clients: the CORS policy of CORS_ALLOWED_ORIGINS, applied by Starlette's CORSMiddleware.

Added outermost (api.main), so that a preflight is answered before authentication asks it for
a key, and every answer, a 401, 403, 413, 429 or the tracing's last-resort 500 included, carries
the headers a page needs to read it. No credentials: keys travel in `Authorization` or
`X-API-Key`, which a page sets itself; the browser adds no cookie the service would trust.
"""

from typing import Any

from api.config import Settings

METHODS = ("GET", "POST", "PUT", "DELETE")
# What a page may send beyond the CORS-safelisted headers.
REQUEST_HEADERS = ("Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "X-Request-ID")
# What a page may read beyond the safelisted response headers: the request id (to quote it),
# the timing, an idempotent replay, and the rate limits' headers of a 429.
EXPOSED_HEADERS = ("X-Request-ID", "X-Response-Time", "Idempotent-Replayed", "RateLimit-Limit",
                   "RateLimit-Remaining", "RateLimit-Reset", "Retry-After")
# How long a browser may reuse a preflight's answer (Starlette's default).
MAX_AGE_SECONDS = 600


def options(settings: Settings) -> dict[str, Any]:
    """CORSMiddleware's arguments for the configured origins."""
    return {"allow_origins": settings.cors_allowed_origins, "allow_methods": METHODS,
            "allow_headers": REQUEST_HEADERS, "expose_headers": EXPOSED_HEADERS,
            "allow_credentials": False, "max_age": MAX_AGE_SECONDS}
