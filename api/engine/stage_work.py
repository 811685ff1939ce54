"""What each build stage asks the model, and how its answer is checked.

Every stage and sub-stage is model work with its own prompt (api/prompts), fed the
requirement and the build context so far. Structured answers (api.engine.answers) are asked
for with a JSON schema and validated here; generated Python must compile. An answer that
fails either check goes back to the model with the error for at most `REPAIR_ROUNDS` more
tries, then the stage fails with `MODEL_OUTPUT_INVALID` or `GENERATED_CODE_INVALID`. Every
call's tokens and time are summed into the stage's `ModelUsage`.
"""

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from api import prompts
from api.core.records import BuildUsage, ModelUsage, Stage
from api.engine.answers import AgentDesign, Architecture, BuildPlan, Deployment, Requirements
from api.engine.stages import STAGES
from api.providers.base import Message, ModelError, ModelRequest, OutputSchema
from api.providers.client import ModelCall, ModelClient

A = TypeVar("A", bound=BaseModel)
T = TypeVar("T")

# Repair rounds after a first invalid answer: enough for a model to fix a missed field or a
# syntax error it was shown; more mostly repeats the same mistake at the same cost.
REPAIR_ROUNDS = 2
# Repair rounds are asked with a presence penalty: at temperature 0 the same conversation gives
# the same answer, and a small model's invalid answer is most often a loop. Measured with
# SmolLM2-135M on a tool that looped ("'BookingServiceResult.BookingServiceResult...", cut at
# 500 tokens), asked again without the looped answer: 0.5 gave a complete function in 144
# tokens, frequency_penalty 0.5 one in 209; with the looped answer and the error sent back, it
# looped again at 0.5.
REPAIR_PRESENCE_PENALTY = 0.5
# Per-call output caps by kind of answer (MODEL_MAX_OUTPUT_TOKENS caps them all): a design or a
# function fits easily; the cap bounds what a small model rambling on costs.
OUTPUT_TOKENS = {"json": 600, "code": 700, "text": 400}
# Every stage and sub-stage that is model work has a prompt of its name.
PROMPTED_STEPS = tuple(name for spec in STAGES
                       for name in ([sub for sub, _ in spec.sub_stages] or [spec.name]))
PYTHON_TYPES = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list": "list[Any]"}
_FENCED = re.compile(r"```[a-zA-Z0-9_-]*\n(.*?)(?:```|$)", re.S)


class StageFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def count_call(usage: ModelUsage, call: ModelCall) -> None:
    """Add one model call to a stage's usage."""
    usage.calls += 1
    usage.input_tokens += call.usage.input_tokens
    usage.output_tokens += call.usage.output_tokens
    usage.tokens_estimated = usage.tokens_estimated or call.usage.estimated
    usage.duration_ms = round(usage.duration_ms + call.duration_ms, 3)


@dataclass
class StageOutput:
    # path -> content
    artifacts: dict[str, str] = field(default_factory=dict)
    # merged into the build context that later stages (and a resumed build) read.
    context: dict[str, Any] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)


def build_usage(stages: list[Stage]) -> BuildUsage:
    """The build's model usage: the sum over its stages and sub-stages so far."""
    used = [step.model_usage for stage in stages for step in stage.steps() if step.model_usage]
    return BuildUsage(calls=sum(usage.calls for usage in used),
                      input_tokens=sum(usage.input_tokens for usage in used),
                      output_tokens=sum(usage.output_tokens for usage in used),
                      tokens_estimated=any(usage.tokens_estimated for usage in used),
                      duration_ms=round(sum(usage.duration_ms for usage in used), 3))


def _json_text(text: str) -> str:
    """The JSON object in an answer: models wrap it in fences or a sentence now and then."""
    fenced = _FENCED.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    return body[start:end + 1] if start != -1 and end > start else body


def _code_text(text: str) -> str:
    fenced = _FENCED.search(text)
    return (fenced.group(1) if fenced else text).strip() + "\n"


def _checked_module(path: str, code: str, defines: str, header: str = "", footer: str = "") -> str:
    """`header + code + footer` if `code` compiles and defines `defines` at the top level; else
    ValueError with what a model needs to fix it (line numbers are those of its answer)."""
    try:
        tree = ast.parse(code, filename=path)
        # Compiled on its own as well: some errors (a duplicate argument, `return` outside a
        # function) come from the compiler's symbol table, after the parse succeeded.
        compile(tree, path, "exec")
    except SyntaxError as exc:
        raise ValueError(f"{path} line {exc.lineno}: {exc.msg}") from exc
    names = {node.name for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    if defines not in names:
        raise ValueError(f"{path} must define `{defines}` at the top level (it defines {sorted(names) or 'nothing'})")
    module = header + code + footer
    try:
        compile(module, path, "exec")
    except SyntaxError as exc:  # e.g. a `from __future__` import, legal only at the top
        raise ValueError(f"{path}: {exc.msg} once the module's own header and footer are added") from exc
    return module


def tool_signature(tool: dict[str, Any]) -> str:
    required = [p for p in tool["parameters"] if p["required"]]
    optional = [p for p in tool["parameters"] if not p["required"]]
    parameters = ([f"{p['name']}: {PYTHON_TYPES[p['type']]}" for p in required]
                  + [f"{p['name']}: {PYTHON_TYPES[p['type']]} | None = None" for p in optional])
    return f"def {tool['name']}({', '.join(parameters)}) -> dict[str, Any]:"


def agent_class_name(agent_name: str) -> str:
    return "".join(part.title() for part in agent_name.split("_"))


def agent_module_parts(design: dict[str, Any]) -> tuple[str, str]:
    """The agent module around the model's `choose_tool`: (header, footer)."""
    tool_names = [tool["name"] for tool in design["tools"]]
    header = (
        f'"""Agent {design["agent_name"]}: {design["description"]}"""\n\n'
        "from pathlib import Path\n\n"
        'SYSTEM_PROMPT = (Path(__file__).parent.parent / "prompts" / "system_prompt.md").read_text()\n'
        f"TOOLS = {tool_names!r}\n\n\n")
    footer = (
        f"\n\nclass {agent_class_name(design['agent_name'])}:\n"
        f"    name = {design['agent_name']!r}\n"
        "    system_prompt = SYSTEM_PROMPT\n"
        "    tools = TOOLS\n\n"
        "    def choose_tool(self, message: str) -> str | None:\n"
        "        return choose_tool(message)\n")
    return header, footer


class StageWorker:
    """Runs one stage or sub-stage as model calls."""

    def __init__(self, client: ModelClient, *, model: str, temperature: float | None,
                 max_output_tokens: int) -> None:
        self.client = client
        self.model = model
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        # Read the prompt files now, at start-up, so no build reads a file on the event loop.
        for stage in PROMPTED_STEPS:
            prompts.load(stage)

    async def run(self, *, stage: str, requirement: str, context: dict[str, Any],
                  usage: ModelUsage) -> StageOutput:
        work = getattr(self, f"_{stage}", None)
        if work is None:
            raise StageFailed("INTERNAL_ERROR", f"no model work is defined for stage {stage}")
        return await work(requirement, context, usage)

    # -- the calls --------------------------------------------------------------------------
    async def _ask(self, prompt_name: str, build_requirement: str, usage: ModelUsage, *, kind: str,
                   check: Callable[[str], T], schema: type[BaseModel] | None = None,
                   inputs: dict[str, Any], **values: str) -> T:
        """Ask, check the answer, send the error back at most REPAIR_ROUNDS times."""
        system, user = prompts.load(prompt_name).render(**values)
        inputs = {"requirement": build_requirement, **inputs}
        messages = [Message("system", system), Message("user", user)]
        output_schema = (OutputSchema(name=prompt_name, schema=schema.model_json_schema())
                         if schema is not None else None)
        problem = ""
        for round_ in range(1 + REPAIR_ROUNDS):
            request = ModelRequest(
                operation="build", model=self.model, messages=tuple(messages),
                max_output_tokens=min(self.max_output_tokens, OUTPUT_TOKENS[kind]),
                temperature=self.temperature, output_schema=output_schema, purpose=prompt_name,
                presence_penalty=REPAIR_PRESENCE_PENALTY if round_ else None, inputs=inputs)
            try:
                call = await self.client.complete(request)
            except ModelError as exc:
                raise StageFailed(exc.code, f"{prompt_name}: {exc}") from exc
            count_call(usage, call)
            try:
                return check(call.text)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                problem = _problem(exc)
                if call.finish_reason == "length":
                    # Cut off at the cap: a loop, as a rule. The question is asked again as it
                    # was (with the penalty), because a model shown its own loop continues it.
                    problem += " (cut off at the length limit)"
                    continue
                messages += [Message("assistant", call.text),
                             Message("user", f"That answer is not valid: {problem}\n"
                                             "Answer again, correcting it, in the same format.")]
        code = "GENERATED_CODE_INVALID" if kind == "code" else "MODEL_OUTPUT_INVALID"
        raise StageFailed(code, f"{prompt_name}: still invalid after {REPAIR_ROUNDS} repair rounds: "
                                f"{problem}; last answer: {call.text[:500]!r}")

    async def _json(self, prompt_name: str, build_requirement: str, schema: type[A], usage: ModelUsage,
                    inputs: dict[str, Any], **values: str) -> A:
        return await self._ask(prompt_name, build_requirement, usage, kind="json", schema=schema, inputs=inputs,
                               check=lambda text: schema.model_validate_json(_json_text(text)),
                               **values)

    # -- the stages -------------------------------------------------------------------------
    async def _orchestrator(self, requirement: str, context: dict[str, Any],
                            usage: ModelUsage) -> StageOutput:
        plan = await self._json("orchestrator", requirement, BuildPlan, usage, {},
                                requirement=requirement)
        body = "\n".join(f"{n}. {step}" for n, step in enumerate(plan.steps, start=1))
        return StageOutput(
            artifacts={"orchestrator/build_plan.md": f"# Build plan\n\n{plan.summary}\n\n{body}\n"},
            context={"plan": plan.model_dump()},
            logs=[f"Planned {len(plan.steps)} steps: {plan.summary}"])

    async def _requirements_analysis(self, requirement: str, context: dict[str, Any],
                                     usage: ModelUsage) -> StageOutput:
        found = await self._json("requirements_analysis", requirement, Requirements, usage, {},
                                 requirement=requirement,
                                 plan=_dumps(context.get("plan")))
        lines = [f"- FR-{n}: {text}" for n, text in enumerate(found.functional, start=1)]
        lines += [f"- NFR-{n}: {text}" for n, text in enumerate(found.non_functional, start=1)]
        document = "# Requirements\n\n" + "\n".join(lines) + f"\n\nKeywords: {', '.join(found.keywords)}\n"
        return StageOutput(artifacts={"requirements/requirements.md": document},
                           context={"requirements": found.model_dump()},
                           logs=[f"Extracted {len(found.functional)} functional and "
                                 f"{len(found.non_functional)} non-functional requirements"])

    async def _system_architecture(self, requirement: str, context: dict[str, Any],
                                   usage: ModelUsage) -> StageOutput:
        layout = await self._json("system_architecture", requirement, Architecture, usage, {},
                                  requirement=requirement,
                                  requirements=_dumps(context.get("requirements")))
        document = ("# Architecture\n\n"
                    + "\n".join(f"- {c.name}: {c.responsibility}" for c in layout.components)
                    + f"\n\n{layout.data_flow}\n")
        return StageOutput(artifacts={"architecture/architecture.md": document},
                           context={"architecture": layout.model_dump()},
                           logs=[f"Laid out {len(layout.components)} components"])

    async def _agent_design(self, requirement: str, context: dict[str, Any],
                            usage: ModelUsage) -> StageOutput:
        design = await self._json("agent_design", requirement, AgentDesign, usage, {},
                                  requirement=requirement,
                                  requirements=_dumps(context.get("requirements")),
                                  architecture=_dumps(context.get("architecture")))
        record = design.model_dump()
        return StageOutput(
            artifacts={"design/agent_design.json": json.dumps(record, indent=2) + "\n"},
            context={"design": record},
            logs=[f"Designed agent {design.agent_name} ({design.category}) with "
                  f"{len(design.tools)} tools: {', '.join(tool.name for tool in design.tools)}"])

    async def _tool_developer(self, requirement: str, context: dict[str, Any],
                              usage: ModelUsage) -> StageOutput:
        design = context["design"]
        artifacts: dict[str, str] = {}
        for tool in design["tools"]:
            path = f"tools/{tool['name']}.py"
            header = (f'"""Tool {tool["name"]} of agent {design["agent_name"]}: '
                      f'{tool["description"]}"""\n\nfrom typing import Any\n\n\n')

            def check(text: str, path: str = path, header: str = header, name: str = tool["name"]) -> str:
                return _checked_module(path, _code_text(text), name, header)

            artifacts[path] = await self._ask(
                "tool_developer", requirement, usage, kind="code", check=check,
                inputs={"design": design, "tool": tool, "signature": tool_signature(tool)},
                agent_name=design["agent_name"], description=design["description"],
                tool_name=tool["name"], tool_description=tool["description"],
                signature=tool_signature(tool))
        return StageOutput(artifacts=artifacts, logs=[f"Wrote {path}" for path in artifacts])

    async def _prompt_engineer(self, requirement: str, context: dict[str, Any],
                               usage: ModelUsage) -> StageOutput:
        design = context["design"]

        def check(text: str) -> str:
            prompt = _code_text(text).strip() if text.lstrip().startswith("```") else text.strip()
            if len(prompt) < 20:
                raise ValueError("the system prompt must be at least a full sentence")
            return prompt[:4000]

        prompt = await self._ask(
            "prompt_engineer", requirement, usage, kind="text", check=check, inputs={"design": design},
            agent_name=design["agent_name"], description=design["description"],
            capabilities=", ".join(design["capabilities"]),
            tools="\n".join(f"- {t['name']}: {t['description']}" for t in design["tools"]))
        return StageOutput(artifacts={"prompts/system_prompt.md": prompt + "\n"},
                           context={"system_prompt": prompt},
                           logs=[f"Wrote a system prompt of {len(prompt)} characters"])

    async def _agent_code_developer(self, requirement: str, context: dict[str, Any],
                                    usage: ModelUsage) -> StageOutput:
        design = context["design"]
        path = f"agent/{design['agent_name']}.py"
        header, footer = agent_module_parts(design)
        module = await self._ask(
            "agent_code_developer", requirement, usage, kind="code",
            check=lambda text: _checked_module(path, _code_text(text), "choose_tool", header, footer),
            inputs={"design": design}, agent_name=design["agent_name"],
            description=design["description"],
            tool_names=", ".join(t["name"] for t in design["tools"]))
        return StageOutput(artifacts={path: module}, logs=[f"Wrote {path}"])

    async def _agent_deployer(self, requirement: str, context: dict[str, Any],
                              usage: ModelUsage) -> StageOutput:
        design = context["design"]
        notes = await self._json("agent_deployer", requirement, Deployment, usage, {"design": design},
                                 agent_name=design["agent_name"], description=design["description"],
                                 tool_names=", ".join(t["name"] for t in design["tools"]))
        manifest = {"agent_name": design["agent_name"], "runtime": "nexus-ai",
                    "provider": self.client.provider_name, "model": self.model,
                    "tools": [tool["name"] for tool in design["tools"]],
                    "summary": notes.summary, "example_requests": notes.example_requests}
        return StageOutput(artifacts={"deployment/manifest.json": json.dumps(manifest, indent=2) + "\n"},
                           context={"deployment": manifest},
                           logs=[f"Prepared deployment of {design['agent_name']}"])


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=1) if value is not None else "(none)"


def _problem(exc: ValueError) -> str:
    """The validation error as a model can act on it: each failing field and why."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(part) for part in error['loc']) or 'answer'}: {error['msg']}"
                         for error in exc.errors()[:8])
    return str(exc)
