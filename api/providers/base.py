"""The model-provider interface: what the build engine and invocations ask of a model.

A provider does the thinking for one stage (or sub-stage) at a time and answers invocations;
the engine owns everything else (ordering, progress, persistence, compiling generated code),
so a hosted provider plugs in without touching the engine.
"""

import abc
from dataclasses import dataclass, field
from typing import Any


class ProviderError(Exception):
    """The provider failed; a build stage fails, an invocation is recorded as failed."""


@dataclass
class StageOutput:
    # path -> content; `.py` files are compiled by the engine before they are accepted.
    artifacts: dict[str, str] = field(default_factory=dict)
    # merged into the build context that later stages (and a resumed build) read.
    context: dict[str, Any] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)


@dataclass
class InvocationResult:
    output: str
    trace: list[dict[str, Any]] = field(default_factory=list)


class ModelProvider(abc.ABC):
    name: str

    @abc.abstractmethod
    async def run_stage(self, *, stage: str, requirement: str, context: dict[str, Any]) -> StageOutput:
        """Do the work of `stage` (a stage or sub-stage name) given the build context so far.

        The context holds `design` (after agent_design: agent_name, description, category,
        capabilities, tools) and `system_prompt` (after prompt_engineer), which the engine uses
        to register the agent."""

    @abc.abstractmethod
    async def invoke(self, *, agent: dict[str, Any], input_text: str,
                     history: list[dict[str, Any]]) -> InvocationResult:
        """Answer `input_text` as `agent`, given the session's earlier messages (oldest first)."""
