"""The offline provider: deterministic stage work and answers from templates, no network.

It reads the requirement's words to pick a category, name the agent, choose tools and write
their code, so two different requirements give visibly different agents. Everything it says
is labelled as coming from the offline provider.
"""

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

from api.providers.base import ModelError, ModelProvider, ModelReply, ModelRequest, TextDelta

LABEL = "[offline provider]"

# (category, trigger words, capabilities, tools as (name, description, [(param, type, required)]))
CATEGORIES: tuple[tuple[str, frozenset[str], tuple[str, ...], tuple[tuple[str, str, tuple[tuple[str, str, bool], ...]], ...]], ...] = (
    ("customer_support",
     frozenset({"customer", "customers", "support", "ticket", "tickets", "complaint", "helpdesk", "refund", "refunds"}),
     ("ticket_triage", "faq_answering", "sentiment_analysis"),
     (("search_knowledge_base", "Search the help-centre articles", (("query", "str", True), ("max_results", "int", False))),
      ("create_ticket", "Open a support ticket", (("subject", "str", True), ("priority", "int", False))),
      ("lookup_order", "Fetch an order by id", (("order_id", "str", True),)))),
    ("data_analysis",
     frozenset({"data", "report", "reports", "analytics", "sales", "metrics", "csv", "dashboard", "forecast", "revenue"}),
     ("data_querying", "report_generation", "trend_analysis"),
     (("run_query", "Run a read-only SQL query", (("sql", "str", True), ("row_limit", "int", False))),
      ("summarize_table", "Summarize a table's columns", (("table", "str", True), ("columns", "list", False))),
      ("forecast_series", "Forecast a numeric series", (("series", "list", True), ("horizon", "int", False))))),
    ("software_engineering",
     frozenset({"code", "review", "bug", "bugs", "github", "repository", "pull", "tests", "refactor", "python"}),
     ("code_review", "bug_triage", "test_generation"),
     (("read_file", "Read a file from the repository", (("path", "str", True),)),
      ("run_tests", "Run the test suite", (("selector", "str", False),)),
      ("comment_on_change", "Comment on a change request", (("change_id", "str", True), ("body", "str", True))))),
    ("scheduling",
     frozenset({"calendar", "meeting", "meetings", "schedule", "email", "emails", "appointment", "reminder", "reminders"}),
     ("calendar_management", "email_drafting", "reminders"),
     (("find_free_slot", "Find a free calendar slot", (("duration_minutes", "int", True), ("attendees", "list", False))),
      ("send_invite", "Send a meeting invitation", (("title", "str", True), ("start", "str", True))),
      ("draft_email", "Draft an email", (("to", "str", True), ("subject", "str", True))))),
    ("research",
     frozenset({"research", "paper", "papers", "summarize", "summary", "article", "articles", "literature", "news"}),
     ("literature_search", "summarization", "citation_management"),
     (("search_papers", "Search a paper index", (("query", "str", True), ("year_from", "int", False))),
      ("summarize_document", "Summarize a document", (("text", "str", True), ("max_words", "int", False))),
      ("format_citation", "Format a citation", (("reference", "str", True), ("style", "str", False))))),
    ("finance",
     frozenset({"invoice", "invoices", "payment", "payments", "expense", "expenses", "budget", "accounting", "tax"}),
     ("invoice_processing", "expense_tracking", "reconciliation"),
     (("parse_invoice", "Extract fields from an invoice", (("document", "str", True),)),
      ("categorize_expense", "Assign an expense category", (("description", "str", True), ("amount", "float", True))),
      ("reconcile_account", "Match payments to invoices", (("account_id", "str", True), ("period", "str", False))))),
)
GENERAL = ("general_assistant", frozenset(), ("question_answering", "task_planning"),
           (("take_note", "Record a note", (("text", "str", True),)),
            ("lookup_reference", "Look up a reference", (("topic", "str", True), ("depth", "int", False)))))

STOPWORDS = frozenset(
    "a an and the to of for in on with that this which who will should can could would must "
    "be is are it its as by from at or into about agent agents build create make want need "
    "help helps me my our we us you your i please able using use like".split()
)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z][a-z0-9]+", text.lower())


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "agent"


def design_for(requirement: str) -> dict[str, Any]:
    """The agent design the offline provider derives from a requirement."""
    words = _words(requirement)
    scored = [(len(set(words) & entry[1]), -index, entry) for index, entry in enumerate(CATEGORIES)]
    best_score, _, best = max(scored)
    category, _, capabilities, tools = best if best_score else GENERAL
    significant = [word for word in words if word not in STOPWORDS and len(word) > 2]
    top = [word for word, _ in Counter(significant).most_common(2)] or ["general"]
    agent_name = _identifier("_".join(word[:16] for word in top) + "_agent")
    summary = _summary(requirement)
    return {
        "agent_name": agent_name,
        "description": f"Agent for: {summary}"[:200],
        "category": category,
        "capabilities": [*capabilities, f"{top[0]}_handling"],
        "tools": [
            {"name": name, "description": description,
             "parameters": [{"name": param, "type": kind, "required": required}
                            for param, kind, required in params]}
            for name, description, params in tools
        ],
        "keywords": [word[:24] for word in top],
    }


def system_prompt_for(design: dict[str, Any]) -> str:
    tools = "\n".join(f"- {tool['name']}: {tool['description']}" for tool in design["tools"])
    return (
        f"You are {design['agent_name']}, a {design['category'].replace('_', ' ')} agent.\n"
        f"{design['description']}\n"
        f"Capabilities: {', '.join(design['capabilities'])}.\n"
        f"Tools:\n{tools}\n"
        "Use a tool when it answers the request; say plainly when none does."
    )


def _select_tool(tools: list[dict[str, Any]], text: str) -> dict[str, Any]:
    words = set(_words(text))

    def overlap(tool: dict[str, Any]) -> int:
        names = set(tool["name"].split("_")) | {p["name"] for p in tool["parameters"]}
        return len(words & names) + len(words & set(_words(tool["description"])))

    return max(tools, key=overlap)


class OfflineProvider(ModelProvider):
    """A deterministic stand-in for a model: it answers each build prompt from the structured
    facts the prompt was written from (`request.inputs`), in the format the prompt asks for,
    so builds take the same path (schema validation, compile checks, usage) as with a model.
    It reports no usage: the client counts its tokens, marked estimated."""

    name = "offline"

    def __init__(self, *, stage_delay_seconds: float) -> None:
        self.stage_delay_seconds = stage_delay_seconds

    def _answer(self, request: ModelRequest) -> str:
        handler = getattr(self, f"_{request.purpose}", None)
        if handler is None:
            raise ModelError(f"the offline provider cannot answer {request.purpose!r}")
        return handler(request.inputs)

    def _reply(self, text: str) -> ModelReply:
        return ModelReply(text=text, finish_reason="stop", model=self.name, usage=None)

    async def complete(self, request: ModelRequest) -> ModelReply:
        # Stands in for the model's thinking time, so that progress and control actions are
        # observable on a laptop.
        await asyncio.sleep(self.stage_delay_seconds)
        return self._reply(self._answer(request))

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelReply]:
        await asyncio.sleep(self.stage_delay_seconds)
        text = self._answer(request)
        for piece in re.findall(r"\S+\s*", text):
            yield TextDelta(piece)
        yield self._reply(text)

    async def list_models(self) -> list[str]:
        return [self.name]

    @staticmethod
    def _orchestrator(inputs: Mapping[str, Any]) -> str:
        summary = _summary(inputs["requirement"])
        steps = ["Analyse the requirement", "Lay out the architecture", "Design the agent and its tools",
                 "Write the tools, the prompt and the agent code", "Deploy the agent"]
        return json.dumps({"summary": f"{LABEL} Build an agent for: {summary}"[:200], "steps": steps})

    @staticmethod
    def _requirements_analysis(inputs: Mapping[str, Any]) -> str:
        requirement = inputs["requirement"]
        sentences = [s.strip()[:100] for s in re.split(r"[.\n!?]+", requirement) if s.strip()][:4]
        return json.dumps({"functional": sentences or [requirement[:100]],
                           "non_functional": [f"{LABEL} answers are deterministic templates"],
                           "keywords": design_for(requirement)["keywords"]})

    @staticmethod
    def _system_architecture(inputs: Mapping[str, Any]) -> str:
        design = design_for(inputs["requirement"])
        components = [{"name": "agent_runtime", "responsibility": "Answers the user's requests"},
                      *({"name": tool["name"], "responsibility": tool["description"]}
                        for tool in design["tools"][:2]),
                      {"name": "session_memory", "responsibility": "Keeps the conversation's history"}]
        return json.dumps({"components": components,
                           "data_flow": f"{LABEL} A request reaches the runtime, which calls a tool "
                                        "and answers from its result and the session's history."})

    @staticmethod
    def _agent_design(inputs: Mapping[str, Any]) -> str:
        design = design_for(inputs["requirement"])
        del design["keywords"]
        return json.dumps(design)

    @staticmethod
    def _tool_developer(inputs: Mapping[str, Any]) -> str:
        tool = inputs["tool"]
        arguments = ", ".join(f"{p['name']!r}: {p['name']}" for p in tool["parameters"])
        return (f"```python\n{inputs['signature']}\n"
                f"    \"\"\"{tool['description']} ({LABEL}: returns its arguments).\"\"\"\n"
                f"    return {{'tool': {tool['name']!r}, 'arguments': {{{arguments}}}}}\n```\n")

    @staticmethod
    def _prompt_engineer(inputs: Mapping[str, Any]) -> str:
        return system_prompt_for(inputs["design"])

    @staticmethod
    def _agent_code_developer(inputs: Mapping[str, Any]) -> str:
        tools = [tool["name"] for tool in inputs["design"]["tools"]]
        return ("```python\ndef choose_tool(message: str) -> str | None:\n"
                f'    """The tool whose name shares most words with the message ({LABEL})."""\n'
                "    words = set(message.lower().split())\n"
                f"    best = max({tools!r}, key=lambda name: len(words & set(name.split('_'))))\n"
                "    return best if words & set(best.split('_')) else None\n```\n")

    @staticmethod
    def _agent_deployer(inputs: Mapping[str, Any]) -> str:
        design = inputs["design"]
        tool = design["tools"][0]
        return json.dumps({"summary": f"{LABEL} {design['description']}"[:200],
                           "example_requests": [f"Please {tool['description'].lower()}"[:100]]})

    @staticmethod
    def _invoke(inputs: Mapping[str, Any]) -> str:
        agent, input_text = inputs["agent"], inputs["input_text"]
        tool = _select_tool(agent["tools"], input_text)
        previous_user = [m["content"] for m in inputs["history"] if m["role"] == "user"]
        lines = [
            f"{LABEL} {agent['agent_name']} ({agent['category']}): deterministic answer, no model was called.",
            f"Request: {input_text}",
            f"Plan: call {tool['name']} ({tool['description'].lower()}).",
            f"Turn {len(previous_user) + 1} of this conversation.",
        ]
        if previous_user:
            lines.append(f"Earlier you said: {previous_user[-1]}")
        return "\n".join(lines)


def _summary(requirement: str) -> str:
    return requirement.strip().splitlines()[0][:200]
