"""What an invocation sends the model: the agent's system prompt, the session's history within
a token budget (oldest turns dropped first), and the user's input; and the trace that says so.

The agent's tools are in its design, but executing them is the sandboxed tool runtime's (a
later issue): until then they are not offered to the model, and the trace says that too.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api.core.records import Agent, Message as StoredMessage
from api.providers.base import Message
from api.providers.tokens import estimate_prompt_tokens

# Messages read from the store for one invocation, before the token budget is applied.
HISTORY_MESSAGES = 50


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    history: list[StoredMessage]  # the turns kept, oldest first
    trace: list[dict[str, Any]]


def conversation(*, agent: Agent, input_text: str, history: Sequence[StoredMessage],
                 budget_tokens: int) -> Conversation:
    kept = list(history)
    turns = [Message(m.role, m.content) for m in kept]
    # Whole turns go, oldest first: a user message without its answer would mislead the model.
    while kept and estimate_prompt_tokens(turns) > budget_tokens:
        drop = 2 if len(kept) > 1 and kept[0].role == "user" and kept[1].role == "assistant" else 1
        kept, turns = kept[drop:], turns[drop:]
    messages = (Message("system", agent.system_prompt), *turns, Message("user", input_text))
    trace = [
        {"step": "history", "messages": len(kept), "dropped": len(history) - len(kept),
         "history_tokens": estimate_prompt_tokens(turns), "budget_tokens": budget_tokens},
        {"step": "tools", "designed": [tool["name"] for tool in agent.tools], "offered": [],
         "note": "tool execution is not available yet; the tools are not offered to the model"},
    ]
    return Conversation(messages=messages, history=kept, trace=trace)


def model_trace(*, provider: str, model: str, finish_reason: str | None, input_tokens: int,
                output_tokens: int, tokens_estimated: bool,
                time_to_first_token_ms: float | None) -> dict[str, Any]:
    return {"step": "model", "provider": provider, "model": model, "finish_reason": finish_reason,
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            "tokens_estimated": tokens_estimated, "time_to_first_token_ms": time_to_first_token_ms}
