"""Agents, their invocations and sessions."""

import logging
import time
from typing import Any

from api.core import ids
from api.core.clock import utc_now
from api.core.context import bind
from api.core.errors import InvalidState, InvocationFailed, NotFound
from api.database.store import Page, Record, Store
from api.observability import metrics
from api.providers.base import ModelProvider, ProviderError
from api.schemas.agents import AgentStatusUpdate, AgentUpdate, SessionCreate

logger = logging.getLogger("api.services.agent_service")

# How many earlier messages an invocation sees.
HISTORY_MESSAGES = 20
STAT_FIELDS = ("total_invocations", "successful_invocations", "failed_invocations",
               "total_duration_ms", "last_invoked_at")


def agent_public(agent: Record) -> Record:
    public = {key: value for key, value in agent.items() if key not in STAT_FIELDS}
    total = agent["total_invocations"]
    public["runtime_stats"] = {
        "total_invocations": total,
        "successful_invocations": agent["successful_invocations"],
        "failed_invocations": agent["failed_invocations"],
        "avg_duration_ms": round(agent["total_duration_ms"] / total, 3) if total else 0.0,
        "last_invoked_at": agent["last_invoked_at"],
    }
    return public


def invocation_public(invocation: Record, *, with_trace: bool) -> Record:
    public = {key: value for key, value in invocation.items() if key != "trace"}
    if with_trace:
        public["trace"] = invocation["trace"]
    return public


class AgentService:
    def __init__(self, *, store: Store, provider: ModelProvider) -> None:
        self.store = store
        self.provider = provider

    async def _agent(self, agent_id: str) -> Record:
        agent = await self.store.get_agent(agent_id=agent_id)
        if agent is None:
            raise NotFound("agent", agent_id)
        bind(agent_id=agent_id, project_id=agent["project_id"])
        return agent

    async def _session(self, session_id: str) -> Record:
        session = await self.store.get_session(session_id=session_id)
        if session is None:
            raise NotFound("session", session_id)
        return session

    async def get(self, *, agent_id: str) -> Record:
        return agent_public(await self._agent(agent_id))

    async def list_agents(self, *, limit: int, last_key: str | None, project_id: str | None,
                   status: str | None, category: str | None, capabilities: list[str] | None) -> Page:
        page = await self.store.list_agents(limit=limit, last_key=last_key, project_id=project_id,
                                            status=status, category=category,
                                            capabilities=capabilities)
        page.items = [agent_public(agent) for agent in page.items]
        return page

    async def update(self, *, agent_id: str, body: AgentUpdate) -> Record:
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        agent = await self.store.update_agent(agent_id=agent_id, changes={**changes, "updated_at": utc_now()})
        if agent is None:
            raise NotFound("agent", agent_id)
        return agent_public(agent)

    async def set_status(self, *, agent_id: str, body: AgentStatusUpdate) -> Record:
        agent = await self.store.update_agent(agent_id=agent_id, changes={
            "status": body.status, "error_message": body.error_message, "updated_at": utc_now()})
        if agent is None:
            raise NotFound("agent", agent_id)
        logger.info("Agent status changed", extra={"agent_id": agent_id, "status": body.status})
        return agent_public(agent)

    async def delete(self, *, agent_id: str) -> None:
        if not await self.store.delete_agent(agent_id=agent_id):
            raise NotFound("agent", agent_id)
        logger.info("Agent deleted", extra={"agent_id": agent_id})

    async def invoke(self, *, agent_id: str, input_text: str, session_id: str | None,
                     enable_trace: bool) -> Record:
        invocation, _ = await self._invoke(agent_id=agent_id, input_text=input_text,
                                           session_id=session_id)
        return invocation_public(invocation, with_trace=enable_trace)

    async def _invoke(self, *, agent_id: str, input_text: str,
                      session_id: str | None) -> tuple[Record, list[Record]]:
        """One invocation, recorded and counted whatever its outcome (with its two messages
        when it is a session turn); raises InvocationFailed after recording a provider failure."""
        agent = await self._agent(agent_id)
        if agent["status"] != "running":
            raise InvalidState(f"Agent {agent_id!r} is {agent['status']}; set it running to invoke it",
                               details={"status": agent["status"]})
        history: list[Record] = []
        if session_id is not None:
            session = await self._session(session_id)
            if session["agent_id"] != agent_id:
                raise NotFound("session", session_id)
            history = await self.store.recent_messages(session_id=session_id, limit=HISTORY_MESSAGES)
        created_at = utc_now()
        started = time.perf_counter()
        try:
            result = await self.provider.invoke(agent=agent, input_text=input_text, history=history)
            status, output, error, trace = "success", result.output, None, result.trace
        except ProviderError as exc:
            status, output, error, trace = "failed", None, str(exc), []
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        invocation = {
            "invocation_id": ids.invocation_id(), "agent_id": agent_id,
            "project_id": agent["project_id"], "session_id": session_id, "input_text": input_text,
            "output": output, "status": status, "error": error, "duration_ms": duration_ms,
            "trace": trace, "created_at": created_at,
        }
        messages: list[Record] = []
        if session_id is not None and status == "success":
            messages = [
                {"message_id": ids.message_id(), "session_id": session_id, "role": "user",
                 "content": input_text, "invocation_id": invocation["invocation_id"], "created_at": created_at},
                {"message_id": ids.message_id(), "session_id": session_id, "role": "assistant",
                 "content": output, "invocation_id": invocation["invocation_id"], "created_at": utc_now()},
            ]
        try:
            await self.store.record_invocation(invocation=invocation, messages=messages)
        except LookupError as exc:
            raise NotFound("agent or session", session_id or agent_id) from exc
        metrics.record_invocation(status=status, seconds=duration_ms / 1000)
        logger.info("Agent invoked", extra={"invocation_id": invocation["invocation_id"],
                                            "status": status, "duration_ms": duration_ms})
        if status == "failed":
            raise InvocationFailed(f"Agent {agent_id!r} failed to answer: {error}",
                                   details={"invocation_id": invocation["invocation_id"]})
        return invocation, messages

    async def invocations(self, *, agent_id: str, limit: int, last_key: str | None) -> Page:
        await self._agent(agent_id)
        page = await self.store.list_invocations(agent_id=agent_id, limit=limit, last_key=last_key)
        page.items = [invocation_public(item, with_trace=True) for item in page.items]
        return page

    # -- sessions --------------------------------------------------------------------------
    async def create_session(self, *, agent_id: str, body: SessionCreate) -> Record:
        now = utc_now()
        session = {"session_id": ids.session_id(), "agent_id": agent_id,
                   "display_name": body.display_name, "metadata": body.metadata,
                   "message_count": 0, "created_at": now, "last_active_at": now}
        if not await self.store.create_session(session=session):
            raise NotFound("agent", agent_id)
        return session

    async def sessions(self, *, agent_id: str, limit: int, last_key: str | None) -> Page:
        await self._agent(agent_id)
        return await self.store.list_sessions(agent_id=agent_id, limit=limit, last_key=last_key)

    async def get_session(self, *, session_id: str) -> Record:
        return await self._session(session_id)

    async def post_message(self, *, session_id: str, content: str) -> dict[str, Any]:
        session = await self._session(session_id)
        invocation, (user_message, assistant_message) = await self._invoke(
            agent_id=session["agent_id"], input_text=content, session_id=session_id)
        return {"user_message": user_message, "assistant_message": assistant_message,
                "invocation": invocation_public(invocation, with_trace=False)}

    async def messages(self, *, session_id: str, limit: int, last_key: str | None) -> Page:
        await self._session(session_id)
        page = await self.store.list_messages(session_id=session_id, limit=limit, last_key=last_key)
        for message in page.items:
            message.pop("seq", None)
        return page

    async def delete_session(self, *, session_id: str) -> None:
        if not await self.store.delete_session(session_id=session_id):
            raise NotFound("session", session_id)
