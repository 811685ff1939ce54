"""The structured answers build stages ask a model for, as pydantic models.

One definition serves both sides of the call: `model_json_schema()` is the JSON schema sent as
`response_format` (where the endpoint supports it), and `model_validate_json()` checks every
answer on our side whatever the endpoint did with the schema. Pydantic rather than
dataclasses because the answers come from outside and need exactly that: parsing, coercion
and error messages a model can act on in a repair round.

Every array has a `maxItems` (without one a small model repeats items until its token limit)
and every string a `maxLength`; names are normalised to lowercase_with_underscores, each word
once, before they are checked, so "Search Flights" from a model that ignores the schema still
counts.
"""

import keyword
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator


def _snake_case(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return re.sub(r"[^a-z0-9]+", "_", value.strip().lower()).strip("_")


def _name(value: Any) -> Any:
    """Snake case, each word once: a small model at temperature 0 loops inside names
    ("agency_agency_agency_agency", "booking_service_booking_booking"), and a name that long
    is then miscopied into the code that must use it. A real name loses little
    ("user_by_user_id" becomes "user_by_id")."""
    value = _snake_case(value)
    if not isinstance(value, str):
        return value
    return "_".join(dict.fromkeys(value.split("_")))


# The normaliser comes after the constraints: a BeforeValidator applies to what precedes it,
# and so the pattern stays in the JSON schema (before them, pydantic leaves it out).
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,39}$", max_length=40),
                       BeforeValidator(_name)]
Word = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,23}$", max_length=24),
                 BeforeValidator(_snake_case)]
# Short bounds: a small model fills whatever room it is given, repeating itself.
Phrase = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Sentence = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Paragraph = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=400)]
T = TypeVar("T")
ParameterType = Literal["str", "int", "float", "bool", "list"]


class Answer(BaseModel):
    # additionalProperties: false, which OpenAI's strict structured outputs require.
    model_config = ConfigDict(extra="forbid")


def _first_of_each(items: list[T], name: Callable[[T], str]) -> list[T]:
    """Later items repeating an earlier one's name dropped: small models repeat list items,
    and a repeated tool or parameter adds nothing (nor does a repair round stop it)."""
    seen: dict[str, T] = {}
    for item in items:
        seen.setdefault(name(item), item)
    return list(seen.values())


def _no_keywords(names: list[str], what: str) -> None:
    reserved = [name for name in names if keyword.iskeyword(name)]
    if reserved:
        raise ValueError(f"{what} names must not be Python keywords: {reserved}")


class BuildPlan(Answer):
    summary: Sentence
    steps: list[Phrase] = Field(min_length=1, max_length=5)


class Requirements(Answer):
    functional: list[Phrase] = Field(min_length=1, max_length=4)
    non_functional: list[Phrase] = Field(max_length=2)
    keywords: list[Word] = Field(min_length=1, max_length=4)

    @model_validator(mode="after")
    def _distinct(self) -> "Requirements":
        self.functional = _first_of_each(self.functional, str.lower)
        self.non_functional = _first_of_each(self.non_functional, str.lower)
        self.keywords = _first_of_each(self.keywords, str)
        return self


class Component(Answer):
    name: Identifier
    responsibility: Sentence


class Architecture(Answer):
    components: list[Component] = Field(min_length=1, max_length=4)
    data_flow: Paragraph

    @model_validator(mode="after")
    def _distinct(self) -> "Architecture":
        self.components = _first_of_each(self.components, lambda component: component.name)
        return self


class ToolParameter(Answer):
    name: Identifier
    type: ParameterType
    required: bool


class ToolDesign(Answer):
    name: Identifier
    description: Sentence
    parameters: list[ToolParameter] = Field(max_length=3)

    @model_validator(mode="after")
    def _parameters_are_python(self) -> "ToolDesign":
        self.parameters = _first_of_each(self.parameters, lambda parameter: parameter.name)
        _no_keywords([parameter.name for parameter in self.parameters], f"tool {self.name} parameter")
        return self


class AgentDesign(Answer):
    agent_name: Identifier
    description: Sentence
    category: Identifier
    capabilities: list[Identifier] = Field(min_length=1, max_length=4)
    tools: list[ToolDesign] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _tools_are_python(self) -> "AgentDesign":
        self.tools = _first_of_each(self.tools, lambda tool: tool.name)
        _no_keywords([tool.name for tool in self.tools], "tool")
        self.capabilities = _first_of_each(self.capabilities, str)
        return self


class Deployment(Answer):
    summary: Sentence
    example_requests: list[Phrase] = Field(min_length=1, max_length=3)
