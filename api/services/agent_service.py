"""Agents, their invocations and sessions."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from api.config import Settings
from api.core import ids
from api.core.clock import utc_now
from api.core.context import bind
from api.core.envelope import View
from api.core.errors import InvalidState, InvocationFailed, NotFound
from api.core.records import AGENT_STAT_FIELDS, Agent, Invocation, Message, Session
from api.database.store import Page, Store
from api.observability import metrics
from api.providers.base import ModelError, ModelRequest, TextDelta
from api.providers.client import ModelCall, ModelClient, StreamProgress
from api.schemas.agents import AgentStatusUpdate, AgentUpdate, SessionCreate
from api.services.conversation import HISTORY_MESSAGES, conversation, model_trace
from api.services.limits import Limits
from api.services.tenancy import TenantScoped

logger = logging.getLogger("api.services.agent_service")

# A stream with nothing to say for this long sends a comment, so that proxies and clients
# do not take a slow model for a dead connection.
HEARTBEAT_SECONDS = 10.0
# Past the model call's deadline, before a dead process's in-flight slot is free: recording
# the invocation takes a moment after the call ends.
SLOT_MARGIN_SECONDS = 30.0

def agent_public(agent: Agent) -> View:
    public = agent.model_dump(exclude=set(AGENT_STAT_FIELDS))
    total = agent.total_invocations
    public["runtime_stats"] = {
        "total_invocations": total,
        "successful_invocations": agent.successful_invocations,
        "failed_invocations": agent.failed_invocations,
        "cancelled_invocations": agent.cancelled_invocations,
        "avg_duration_ms": round(agent.total_duration_ms / total, 3) if total else 0.0,
        "last_invoked_at": agent.last_invoked_at,
        "total_input_tokens": agent.total_input_tokens,
        "total_output_tokens": agent.total_output_tokens,
        "avg_time_to_first_token_ms": (round(agent.ttft_ms_total / agent.ttft_count, 3)
                                       if agent.ttft_count else 0.0),
    }
    return public


def invocation_public(invocation: Invocation, *, with_trace: bool) -> View:
    return invocation.model_dump(exclude=None if with_trace else {"trace"})


def message_public(message: Message) -> View:
    """A message without its place in the session (the API orders them, it does not number them)."""
    return message.model_dump(exclude={"seq"})


def turn_public(turn: "Turn") -> View:
    """A session turn as POST /sessions/{id}/messages answers it."""
    user_message, assistant_message = turn.messages
    return {"user_message": message_public(user_message),
            "assistant_message": message_public(assistant_message),
            "invocation": invocation_public(turn.invocation, with_trace=False)}


@dataclass(frozen=True)
class PreparedTurn:
    invocation_id: str
    agent: Agent
    session_id: str | None
    input_text: str
    request: ModelRequest
    trace: list[dict[str, Any]]
    # The in-flight limits' pools whose slots the turn holds until its call ends.
    slots: list[str]


@dataclass(frozen=True)
class Turn:
    """A recorded invocation, with its messages when it was a session turn."""

    invocation: Invocation
    messages: list[Message]


@dataclass(frozen=True)
class Heartbeat:
    """Nothing new from the model for HEARTBEAT_SECONDS (a stream sends a comment)."""


class AgentService(TenantScoped):
    def __init__(self, *, store: Store, client: ModelClient, settings: Settings,
                 limits: Limits) -> None:
        self.limits = limits
        self.store = store
        self.client = client
        self.settings = settings
        self._calls: set[asyncio.Task[None]] = set()

    async def _agent(self, agent_id: str) -> Agent:
        agent = await self.store.get_agent(tenant_id=self.tenant_id, agent_id=agent_id)
        if agent is None:
            raise NotFound("agent", agent_id)
        bind(agent_id=agent_id, project_id=agent.project_id)
        return agent

    async def _session(self, session_id: str) -> Session:
        session = await self.store.get_session(tenant_id=self.tenant_id, session_id=session_id)
        if session is None:
            raise NotFound("session", session_id)
        return session

    async def get(self, *, agent_id: str) -> View:
        return agent_public(await self._agent(agent_id))

    async def list_agents(self, *, limit: int, last_key: str | None, project_id: str | None,
                   status: str | None, category: str | None, capabilities: list[str] | None) -> Page[View]:
        page = await self.store.list_agents(tenant_id=self.tenant_id, limit=limit, last_key=last_key, project_id=project_id,
                                            status=status, category=category,
                                            capabilities=capabilities)
        return Page(items=[agent_public(agent) for agent in page.items], last_key=page.last_key)

    async def update(self, *, agent_id: str, body: AgentUpdate) -> View:
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        agent = await self.store.update_agent(tenant_id=self.tenant_id, agent_id=agent_id,
                                              changes={**changes, "updated_at": utc_now()})
        if agent is None:
            raise NotFound("agent", agent_id)
        return agent_public(agent)

    async def set_status(self, *, agent_id: str, body: AgentStatusUpdate) -> View:
        agent = await self.store.update_agent(tenant_id=self.tenant_id, agent_id=agent_id, changes={
            "status": body.status, "error_message": body.error_message, "updated_at": utc_now()})
        if agent is None:
            raise NotFound("agent", agent_id)
        logger.info("Agent status changed", extra={"agent_id": agent_id, "status": body.status})
        return agent_public(agent)

    async def delete(self, *, agent_id: str) -> None:
        if not await self.store.delete_agent(tenant_id=self.tenant_id, agent_id=agent_id):
            raise NotFound("agent", agent_id)
        logger.info("Agent deleted", extra={"agent_id": agent_id})

    async def invoke(self, *, agent_id: str, input_text: str, session_id: str | None,
                     enable_trace: bool) -> View:
        turn = await self.prepare(agent_id=agent_id, input_text=input_text, session_id=session_id)
        async for event in self.run(turn):
            if isinstance(event, Turn):
                return invocation_public(event.invocation, with_trace=enable_trace)
        raise AssertionError("an invocation ends with its record")

    async def prepare(self, *, agent_id: str, input_text: str, session_id: str | None) -> PreparedTurn:
        """Check the agent (and session) and put the model request together; raises the API's
        errors before anything is streamed."""
        agent = await self._agent(agent_id)
        if agent.status != "running":
            raise InvalidState(f"Agent {agent_id!r} is {agent.status}; set it running to invoke it",
                               details={"status": agent.status})
        history: list[Message] = []
        if session_id is not None:
            session = await self._session(session_id)
            if session.agent_id != agent_id:
                raise NotFound("session", session_id)
            history = await self.store.recent_messages(tenant_id=self.tenant_id, session_id=session_id,
                                                       limit=HISTORY_MESSAGES)
        talk = conversation(agent=agent, input_text=input_text, history=history,
                            budget_tokens=self.settings.agent_history_token_budget)
        request = ModelRequest(
            operation="invoke", model=self.settings.model_for("invoke"), messages=talk.messages,
            max_output_tokens=self.settings.model_max_output_tokens,
            temperature=self.settings.model_temperature, purpose="invoke",
            inputs={"agent": agent.model_dump(include={"agent_name", "category", "tools"}),
                    "input_text": input_text,
                    "history": [{"role": m.role, "content": m.content} for m in talk.history]})
        invocation_id = ids.invocation_id()
        # Last, once nothing else can refuse the turn: from here `run` releases the slots. A
        # turn never run (its client left before the stream began) frees them at the
        # model call's deadline.
        slots = await self.limits.hold_invocation(self.principal, invocation_id,
                                                  self.client.deadline_seconds + SLOT_MARGIN_SECONDS)
        return PreparedTurn(invocation_id=invocation_id, agent=agent, session_id=session_id,
                            input_text=input_text, request=request, trace=talk.trace, slots=slots)

    async def run(self, turn: PreparedTurn) -> AsyncIterator[TextDelta | Heartbeat | Turn]:
        """The model's text as it comes (with a Heartbeat after each quiet HEARTBEAT_SECONDS),
        then the recorded Turn. The model call runs in its own task, so that a consumer that
        goes away (a client gone from a stream) cancels it and it still records the
        invocation `cancelled`, with the tokens used so far."""
        events: asyncio.Queue[TextDelta | Turn | BaseException] = asyncio.Queue()
        task = asyncio.create_task(self._call(turn, events.put_nowait), name="invocation")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        try:
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT_SECONDS):
                        event = await events.get()
                except TimeoutError:
                    yield Heartbeat()
                    continue
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Turn):
                    return
        finally:
            task.cancel()

    async def drain(self) -> None:
        """Wait for invocations still being recorded (shutdown)."""
        await asyncio.gather(*self._calls, return_exceptions=True)

    async def _call(self, turn: PreparedTurn, emit: Callable[[TextDelta | Turn | BaseException], None]) -> None:
        outcome: Turn | BaseException
        try:
            outcome = await self._answer(turn, emit)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a failed answer, a store failure, a bug: the consumer raises it
            outcome = exc
        finally:
            # Before the answer goes out: a client that has it may invoke again at once.
            await self.limits.release_invocation(self.principal, turn.invocation_id, turn.slots)
        emit(outcome)

    async def _answer(self, turn: PreparedTurn, emit: Callable[[TextDelta], None]) -> Turn:
        """Stream the model's answer through `emit` and record the invocation, whatever its
        outcome; InvocationFailed after recording a failed one."""
        # The model call's log line carries the invocation's id.
        bind(agent_id=turn.agent.agent_id, project_id=turn.agent.project_id,
             invocation_id=turn.invocation_id)
        progress = StreamProgress(turn.request)
        created_at = utc_now()
        call: ModelCall | None = None
        try:
            async for event in self.client.stream(turn.request, progress):
                if isinstance(event, TextDelta):
                    emit(event)
                else:
                    call = event
        except ModelError as exc:
            invocation = self._invocation(turn, progress, None, created_at, status="failed", error=str(exc))
            await self._record(turn, invocation)
            raise InvocationFailed(f"Agent {turn.agent.agent_id!r} failed to answer: {exc}",
                                   details={"invocation_id": invocation.invocation_id,
                                            "model_error": exc.code}) from exc
        except asyncio.CancelledError:
            invocation = self._invocation(turn, progress, None, created_at, status="cancelled",
                                          error="the client went away before the answer was complete")
            await self._record(turn, invocation)
            raise
        invocation = self._invocation(turn, progress, call, created_at, status="success", error=None)
        return Turn(invocation=invocation, messages=await self._record(turn, invocation))

    def _invocation(self, turn: PreparedTurn, progress: StreamProgress, call: ModelCall | None,
                    created_at: str, *, status: str, error: str | None) -> Invocation:
        usage = call.usage if call is not None else progress.usage_so_far()
        trace_model = model_trace(
            provider=self.client.provider_name, model=turn.request.model,
            finish_reason=call.finish_reason if call else None, input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens, tokens_estimated=usage.estimated,
            time_to_first_token_ms=progress.time_to_first_token_ms)
        return Invocation(
            tenant_id=self.tenant_id, invocation_id=turn.invocation_id,
            agent_id=turn.agent.agent_id, project_id=turn.agent.project_id,
            session_id=turn.session_id, input_text=turn.input_text,
            output=call.text if call else (progress.text or None), status=status, error=error,
            duration_ms=progress.elapsed_ms(), model=turn.request.model,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            tokens_estimated=usage.estimated,
            time_to_first_token_ms=progress.time_to_first_token_ms,
            finish_reason=call.finish_reason if call else None,
            trace=[*turn.trace, trace_model], created_at=created_at)

    async def _record(self, turn: PreparedTurn, invocation: Invocation) -> list[Message]:
        """Store the invocation (with the turn's two messages when it is a successful session
        turn), counted whatever its outcome."""
        session_id, messages = turn.session_id, []
        if session_id is not None and invocation.status == "success":
            messages = [
                Message(tenant_id=self.tenant_id, message_id=ids.message_id(),
                        session_id=session_id, role="user", content=turn.input_text,
                        invocation_id=invocation.invocation_id, created_at=invocation.created_at),
                Message(tenant_id=self.tenant_id, message_id=ids.message_id(),
                        session_id=session_id, role="assistant", content=invocation.output or "",
                        invocation_id=invocation.invocation_id, created_at=utc_now()),
            ]
        try:
            await self.store.record_invocation(tenant_id=self.tenant_id, invocation=invocation,
                                               messages=messages)
        except LookupError as exc:
            raise NotFound("agent or session", session_id or turn.agent.agent_id) from exc
        await self.limits.spend_tokens(self.principal,
                                       invocation.input_tokens + invocation.output_tokens)
        status = invocation.status
        metrics.record_invocation(status=status, seconds=invocation.duration_ms / 1000)
        logger.info("Agent invoked", extra={
            "invocation_id": invocation.invocation_id, "status": status,
            "duration_ms": invocation.duration_ms, "input_tokens": invocation.input_tokens,
            "output_tokens": invocation.output_tokens})
        return messages

    async def invocations(self, *, agent_id: str, limit: int, last_key: str | None) -> Page[View]:
        await self._agent(agent_id)
        page = await self.store.list_invocations(tenant_id=self.tenant_id, agent_id=agent_id,
                                                 limit=limit, last_key=last_key)
        return Page(items=[invocation_public(item, with_trace=True) for item in page.items],
                    last_key=page.last_key)

    # -- sessions --------------------------------------------------------------------------
    async def create_session(self, *, agent_id: str, body: SessionCreate) -> Session:
        now = utc_now()
        session = Session(tenant_id=self.tenant_id, session_id=ids.session_id(), agent_id=agent_id,
                          display_name=body.display_name, metadata=body.metadata,
                          created_at=now, last_active_at=now)
        if not await self.store.create_session(tenant_id=self.tenant_id, session=session):
            raise NotFound("agent", agent_id)
        return session

    async def sessions(self, *, agent_id: str, limit: int, last_key: str | None) -> Page[Session]:
        await self._agent(agent_id)
        return await self.store.list_sessions(tenant_id=self.tenant_id, agent_id=agent_id,
                                              limit=limit, last_key=last_key)

    async def get_session(self, *, session_id: str) -> Session:
        return await self._session(session_id)

    async def prepare_message(self, *, session_id: str, content: str) -> PreparedTurn:
        session = await self._session(session_id)
        return await self.prepare(agent_id=session.agent_id, input_text=content, session_id=session_id)

    async def post_message(self, *, session_id: str, content: str) -> View:
        turn = await self.prepare_message(session_id=session_id, content=content)
        async for event in self.run(turn):
            if isinstance(event, Turn):
                return turn_public(event)
        raise AssertionError("an invocation ends with its record")

    async def messages(self, *, session_id: str, limit: int, last_key: str | None) -> Page[View]:
        await self._session(session_id)
        page = await self.store.list_messages(tenant_id=self.tenant_id, session_id=session_id,
                                              limit=limit, last_key=last_key)
        return Page(items=[message_public(message) for message in page.items], last_key=page.last_key)

    async def delete_session(self, *, session_id: str) -> None:
        if not await self.store.delete_session(tenant_id=self.tenant_id, session_id=session_id):
            raise NotFound("session", session_id)
