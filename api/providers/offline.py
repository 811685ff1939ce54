"""The offline provider: deterministic stage work and answers from templates, no network.

It reads the requirement's words to pick a category, name the agent, choose tools and write
their code, so two different requirements give visibly different agents. Everything it says
is labelled as coming from the offline provider.
"""

import asyncio
import json
import re
from collections import Counter
from typing import Any

from api.providers.base import (
    InvocationResult,
    ModelProvider,
    ProviderError,
    StageOutput,
)

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
PARAM_TYPES = {"str": "str", "int": "int", "float": "float", "list": "list[Any]"}


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
    agent_name = _identifier("_".join(top) + "_agent")
    summary = requirement.strip().splitlines()[0][:200]
    return {
        "agent_name": agent_name,
        "description": f"Agent for: {summary}",
        "category": category,
        "capabilities": [*capabilities, f"{top[0]}_handling"],
        "tools": [
            {"name": name, "description": description,
             "parameters": [{"name": param, "type": kind, "required": required}
                            for param, kind, required in params]}
            for name, description, params in tools
        ],
        "keywords": top,
    }


def tool_module(tool: dict[str, Any], agent_name: str) -> str:
    required = [p for p in tool["parameters"] if p["required"]]
    optional = [p for p in tool["parameters"] if not p["required"]]
    signature = ", ".join(
        [f"{p['name']}: {PARAM_TYPES[p['type']]}" for p in required]
        + [f"{p['name']}: {PARAM_TYPES[p['type']]} | None = None" for p in optional])
    arguments = ", ".join(f"{p['name']!r}: {p['name']}" for p in tool["parameters"])
    return (
        f'"""Tool {tool["name"]} of agent {agent_name} (generated by the offline provider)."""\n\n'
        "from typing import Any\n\n"
        f"DESCRIPTION = {tool['description']!r}\n\n\n"
        f"def {tool['name']}({signature}) -> dict[str, Any]:\n"
        f"    return {{'tool': {tool['name']!r}, 'arguments': {{{arguments}}}}}\n"
    )


def agent_module(design: dict[str, Any], system_prompt: str) -> str:
    class_name = "".join(part.title() for part in design["agent_name"].split("_"))
    tool_names = [tool["name"] for tool in design["tools"]]
    return (
        f'"""Agent {design["agent_name"]} (generated by the offline provider)."""\n\n'
        "from typing import Any\n\n"
        f"SYSTEM_PROMPT = {system_prompt!r}\n"
        f"TOOLS = {tool_names!r}\n\n\n"
        f"class {class_name}:\n"
        f"    name = {design['agent_name']!r}\n\n"
        "    def __init__(self) -> None:\n"
        "        self.history: list[dict[str, str]] = []\n\n"
        "    def handle(self, message: str) -> dict[str, Any]:\n"
        "        self.history.append({'role': 'user', 'content': message})\n"
        "        words = set(message.lower().split())\n"
        "        tool = max(TOOLS, key=lambda name: len(words & set(name.split('_'))))\n"
        "        return {'agent': self.name, 'tool': tool, 'turn': len(self.history)}\n"
    )


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
    name = "offline"

    def __init__(self, *, stage_delay_seconds: float) -> None:
        self.stage_delay_seconds = stage_delay_seconds

    async def run_stage(self, *, stage: str, requirement: str, context: dict[str, Any]) -> StageOutput:
        # Stands in for the model's thinking time, so that progress and control actions are
        # observable on a laptop.
        await asyncio.sleep(self.stage_delay_seconds)
        try:
            handler = getattr(self, f"_{stage}")
        except AttributeError as exc:
            raise ProviderError(f"offline provider has no stage {stage}") from exc
        return handler(requirement, context)

    def _orchestrator(self, requirement: str, context: dict[str, Any]) -> StageOutput:
        plan = ["requirements_analysis", "system_architecture", "agent_design",
                "agent_developer_manager", "agent_deployer"]
        body = "\n".join(f"{n}. {stage}" for n, stage in enumerate(plan, start=1))
        return StageOutput(
            artifacts={"orchestrator/build_plan.md": f"# Build plan\n\n{LABEL}\n\n{body}\n"},
            context={"plan": plan},
            logs=[f"Planned {len(plan)} stages for the requirement ({len(requirement)} characters)"])

    def _requirements_analysis(self, requirement: str, context: dict[str, Any]) -> StageOutput:
        design = design_for(requirement)
        sentences = [s.strip() for s in re.split(r"[.\n!?]+", requirement) if s.strip()]
        functional = [f"FR-{n}: {sentence}" for n, sentence in enumerate(sentences, start=1)]
        document = ("# Requirements\n\n" + f"{LABEL}\n\n" + "\n".join(f"- {line}" for line in functional)
                    + f"\n\nKeywords: {', '.join(design['keywords'])}\n")
        return StageOutput(
            artifacts={"requirements/requirements.md": document},
            context={"requirements": {"functional": functional, "keywords": design["keywords"]}},
            logs=[f"Extracted {len(functional)} functional requirements"])

    def _system_architecture(self, requirement: str, context: dict[str, Any]) -> StageOutput:
        design = design_for(requirement)
        components = ["api_gateway", "agent_runtime", *(tool["name"] for tool in design["tools"]),
                      "session_memory"]
        document = (f"# Architecture\n\n{LABEL}\n\nCategory: {design['category']}\n\n"
                    + "\n".join(f"- {component}" for component in components) + "\n")
        return StageOutput(
            artifacts={"architecture/architecture.md": document},
            context={"architecture": {"components": components}},
            logs=[f"Laid out {len(components)} components"])

    def _agent_design(self, requirement: str, context: dict[str, Any]) -> StageOutput:
        design = design_for(requirement)
        return StageOutput(
            artifacts={"design/agent_design.json": json.dumps(design, indent=2) + "\n"},
            context={"design": design},
            logs=[f"Designed agent {design['agent_name']} ({design['category']}) "
                  f"with {len(design['tools'])} tools"])

    def _tool_developer(self, requirement: str, context: dict[str, Any]) -> StageOutput:
        design = context["design"]
        return StageOutput(
            artifacts={f"tools/{tool['name']}.py": tool_module(tool, design["agent_name"])
                       for tool in design["tools"]},
            logs=[f"Wrote tool {tool['name']}" for tool in design["tools"]])

    def _prompt_engineer(self, requirement: str, context: dict[str, Any]) -> StageOutput:
        prompt = system_prompt_for(context["design"])
        return StageOutput(artifacts={"prompts/system_prompt.md": prompt + "\n"},
                           context={"system_prompt": prompt},
                           logs=[f"Wrote a system prompt of {len(prompt)} characters"])

    def _agent_code_developer(self, requirement: str, context: dict[str, Any]) -> StageOutput:
        design = context["design"]
        path = f"agent/{design['agent_name']}.py"
        return StageOutput(artifacts={path: agent_module(design, context["system_prompt"])},
                           logs=[f"Wrote {path}"])

    def _agent_deployer(self, requirement: str, context: dict[str, Any]) -> StageOutput:
        design = context["design"]
        manifest = {"agent_name": design["agent_name"], "runtime": "nexus-ai",
                    "provider": self.name, "tools": [tool["name"] for tool in design["tools"]]}
        return StageOutput(artifacts={"deployment/manifest.json": json.dumps(manifest, indent=2) + "\n"},
                           context={"deployment": manifest},
                           logs=[f"Prepared deployment of {design['agent_name']}"])

    async def invoke(self, *, agent: dict[str, Any], input_text: str,
                     history: list[dict[str, Any]]) -> InvocationResult:
        tool = _select_tool(agent["tools"], input_text)
        previous_user = [m["content"] for m in history if m["role"] == "user"]
        turn = len(previous_user) + 1
        lines = [
            f"{LABEL} {agent['agent_name']} ({agent['category']}): deterministic answer, no model was called.",
            f"Request: {input_text}",
            f"Plan: call {tool['name']} ({tool['description'].lower()}).",
            f"Turn {turn} of this conversation.",
        ]
        if previous_user:
            lines.append(f"Earlier you said: {previous_user[-1]}")
        trace = [
            {"step": "history", "messages": len(history)},
            {"step": "select_tool", "tool": tool["name"]},
            {"step": "respond", "provider": self.name},
        ]
        return InvocationResult(output="\n".join(lines), trace=trace)
