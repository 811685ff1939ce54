"""Idempotency keys: a POST that creates, sent again with the same `Idempotency-Key` and the
same request within 24 h, gets the first answer back instead of creating twice.

A pure ASGI middleware rather than a dependency, because it must see the whole response
(Server-Sent Events included) to keep it, and answer a replay without running the route.
The first request claims the key in the store (per tenant, atomically on both backends), runs,
and its complete 2xx answer is kept; any other outcome releases the key so that a retry runs
anew. A retry while the first still runs is 409 IDEMPOTENCY_KEY_IN_USE (Retry-After: 1); the
same key with another request is 409 IDEMPOTENCY_KEY_REUSED. A claim never answered (its
process died) is taken over once it is older than the longest a request can run.
"""

import hashlib
import json
import logging
import re
import time
import uuid
from typing import Any

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.clock import iso_timestamp
from api.core.context import bind
from api.core.envelope import error_response
from api.core.handlers import store_error_response
from api.core.store_errors import RecordTooLarge, StoreError
from api.database.store import MAX_RECORD_BYTES, IdempotencyKeyState, IdempotentAnswer, Store

logger = logging.getLogger("api.middleware.idempotency")

HEADER = b"idempotency-key"
ROUTES = re.compile(r"/api/v1/(projects|agents/[^/]+/(invoke|sessions)|sessions/[^/]+/messages)")
# Visible ASCII, as the IETF draft's examples and Stripe's keys; long enough for a UUID or a
# hash of the client's own request id.
VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
KEPT_SECONDS = 24 * 3600
# A claim is taken for dead after twice the model call's deadline (an invocation's longest
# part), and never sooner than this.
MIN_STALE_SECONDS = 15 * 60


def _fingerprint(scope: Scope, body: bytes) -> str:
    """The request a key stands for: method, path, query, the answer's form (JSON or a
    stream) and the body, as JSON values compare (key order and spacing do not matter)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:  # not JSON: the route refuses it, and the same bytes refuse alike
        canonical = body
    accept = dict(scope["headers"]).get(b"accept", b"")
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope["query_string"], accept, canonical):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def _whole(content_type: str, body: bytes) -> bool:
    """Whether a 2xx body is the request's answer: a stream's is only if it ends with its
    `done` event (one ending with `error` failed after its 200 went out)."""
    if not content_type.startswith("text/event-stream"):
        return True
    return body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].startswith(b"event: done")


def _too_large(key: str, size: int) -> None:
    logger.warning("Answer too large to keep for an idempotency key",
                   extra={"idempotency_key": key, "bytes": size})


async def _reply(scope: Scope, receive: Receive, send: Send, answer: IdempotentAnswer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
        (b"idempotent-replayed", b"true")]})
    await send({"type": "http.response.body", "body": answer.body})


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = dict(scope.get("headers", ())).get(HEADER) if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST" or not ROUTES.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        text = key.decode("latin-1")
        if not VALID_KEY.fullmatch(text):
            message = "must be 1 to 255 visible ASCII characters (a UUID, say)"
            await error_response("VALIDATION_ERROR", f"Idempotency-Key {message}", details=[
                {"field": "Idempotency-Key", "location": "header", "message": message,
                 "type": "value_error"}])(scope, receive, send)
            return
        try:
            body = await self._read_body(receive)
        except HTTPException as exc:  # over the body limit (api.middleware.body_limit)
            await error_response("PAYLOAD_TOO_LARGE", str(exc.detail))(scope, receive, send)
            return
        if body is None:
            return  # the client left before sending its body
        await self._claimed(scope, receive, send, text, body)

    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _claimed(self, scope: Scope, receive: Receive, send: Send, key: str, body: bytes) -> None:
        app = scope["app"]
        store: Store = app.state.store
        # The tenant of the principal api.middleware.auth decided (it runs before this one).
        tenant_id = scope["state"]["principal"].tenant_id
        bind(tenant_id=tenant_id)
        fingerprint, claim_id, now = _fingerprint(scope, body), uuid.uuid4().hex, time.time()
        stale_seconds = max(MIN_STALE_SECONDS, 2 * app.state.model_deadline_seconds)
        try:
            held = await store.claim_idempotency_key(
                tenant_id=tenant_id, key=key, fingerprint=fingerprint, claim_id=claim_id,
                now=iso_timestamp(now), expires_at=iso_timestamp(now + KEPT_SECONDS),
                stale_before=iso_timestamp(now - stale_seconds))
        except StoreError as exc:
            await store_error_response(exc)(scope, receive, send)
            return
        if held is not None:
            # Not through the routes' dependencies: count the call here, as they would.
            app.state.api_calls.count(tenant_id)
            await self._answer_held(scope, receive, send, held, fingerprint)
            return
        await self._run(scope, receive, send, store, tenant_id, key, claim_id, body)

    @staticmethod
    async def _answer_held(scope: Scope, receive: Receive, send: Send, held: IdempotencyKeyState,
                           fingerprint: str) -> None:
        if held.fingerprint != fingerprint:
            response = error_response("IDEMPOTENCY_KEY_REUSED", "This Idempotency-Key was used for "
                                      "another request (method, path, Accept header or body)")
        elif held.answer is None:
            response = error_response("IDEMPOTENCY_KEY_IN_USE", "The first request with this "
                                      "Idempotency-Key is still running", headers={"Retry-After": "1"})
        else:
            await _reply(scope, receive, send, held.answer)
            return
        await response(scope, receive, send)

    async def _run(self, scope: Scope, receive: Receive, send: Send, store: Store, tenant_id: str,
                   key: str, claim_id: str, body: bytes) -> None:
        delivered = False

        async def replay_body() -> Message:
            # The body once, then the client's own messages: a stream still sees a disconnect.
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        started: dict[str, Any] = {}
        chunks: list[bytes] = []
        size, complete = 0, False

        async def keeping_send(message: Message) -> None:
            nonlocal size, complete
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
                if size <= MAX_RECORD_BYTES:
                    chunks.append(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, replay_body, keeping_send)
        finally:
            answer = None
            if complete and 200 <= started.get("status", 500) < 300:
                content_type = dict(started.get("headers", ())).get(b"content-type", b"").decode()
                whole = b"".join(chunks)
                if size > MAX_RECORD_BYTES:
                    _too_large(key, size)
                elif _whole(content_type, whole):
                    answer = IdempotentAnswer(started["status"], content_type, whole)
            # Cancelled or not, the key must not stay claimed by a request that is over.
            with anyio.CancelScope(shield=True):
                await self._settle(store, tenant_id, key, claim_id, answer)

    @staticmethod
    async def _settle(store: Store, tenant_id: str, key: str, claim_id: str,
                      answer: IdempotentAnswer | None) -> None:
        """Keep the answer for retries, or free the key so that a retry runs anew."""
        try:
            if answer is not None:
                try:
                    if not await store.keep_idempotent_answer(tenant_id=tenant_id, key=key,
                                                              claim_id=claim_id, answer=answer):
                        logger.warning("Idempotency key claim was taken over before its answer",
                                       extra={"idempotency_key": key})
                    return
                except RecordTooLarge:
                    _too_large(key, len(answer.body))
            await store.release_idempotency_key(tenant_id=tenant_id, key=key, claim_id=claim_id)
        except StoreError as exc:
            # The answer went out; only its replay is lost. A claim left behind goes stale.
            logger.error("Idempotency key not settled", extra={"idempotency_key": key,
                                                               "error": str(exc)})
