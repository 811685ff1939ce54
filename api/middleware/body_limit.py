"""Refuse request bodies over 1 MiB before any handler reads them."""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.envelope import error_response

MAX_BODY_BYTES = 1024 * 1024


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            response = error_response("PAYLOAD_TOO_LARGE",
                                      f"Request body exceeds {self.max_body_bytes} bytes")
            await response(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            # Chunked bodies declare no length: count as they arrive. The exception is raised
            # inside the handler's body read, so the app's 413 handler answers it.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, f"Request body exceeds {self.max_body_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)
