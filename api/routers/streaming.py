"""Server-Sent Events for invocations and session turns.

`event: delta` frames carry the model's text as it comes, `event: done` the stored record (the
same body the JSON answer's `data` has), `event: error` the error envelope, and a comment
every HEARTBEAT_SECONDS of silence keeps proxies from closing a slow model's connection.
`X-Accel-Buffering: no` tells nginx not to buffer the stream, `Cache-Control: no-cache` every
other cache. A client that disconnects cancels the model call (Starlette cancels the body's
iterator on `http.disconnect`); the invocation is recorded `cancelled`.
"""

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.core.envelope import error_body, internal_error_body
from api.core.errors import ApiError
from api.core.store_errors import StoreError
from api.providers.base import TextDelta
from api.services.agent_service import Heartbeat, Turn

logger = logging.getLogger("api.routers.streaming")
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def wants_stream(request: Request, stream: bool) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")


def _frame(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str, ensure_ascii=False)}\n\n"


def event_stream(events: AsyncIterator[TextDelta | Heartbeat | Turn],
                 done: Callable[[Turn], Any], *, debug: bool, status_code: int = 200) -> StreamingResponse:
    """The answer as events, with the status its JSON form has (201 for a session turn)."""
    async def frames() -> AsyncIterator[str]:
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield _frame("delta", {"text": event.text})
                elif isinstance(event, Heartbeat):
                    yield ": heartbeat\n\n"
                else:
                    yield _frame("done", done(event))
        except ApiError as exc:
            yield _frame("error", error_body(exc.code, exc.message, exc.details))
        except StoreError as exc:
            logger.error("Database error", extra={"error": str(exc)})
            yield _frame("error", error_body("DATABASE_ERROR", "The database could not complete the request."))
        except Exception as exc:  # the headers are gone: the error travels as an event
            logger.exception("Unhandled error in an event stream")
            yield _frame("error", internal_error_body(exc, debug=debug))

    return StreamingResponse(frames(), status_code=status_code, media_type="text/event-stream",
                             headers=HEADERS)
