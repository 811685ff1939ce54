"""Shared request shapes: strict models and the pagination query."""

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, StringConstraints

# Each model's schema examples by model name: FastAPI drops every null from the OpenAPI
# document (jsonable_encoder(exclude_none=True)), and with them an example's required nullable
# fields; api.routers.openapi puts these back.
EXAMPLES: dict[str, list[Any]] = {}


class Documented(BaseModel):
    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        extra = cls.model_config.get("json_schema_extra")
        if isinstance(extra, dict) and "examples" in extra:
            EXAMPLES[cls.__name__] = extra["examples"]  # type: ignore[assignment]


class StrictModel(Documented):
    # An unknown field is a typo the client wants to hear about, not silently dropped; and a
    # value of another JSON type is refused, not coerced (`"priority": true` is not 1).
    model_config = ConfigDict(extra="forbid", strict=True)


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]

Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
LastKey = Annotated[str | None, Query(max_length=1024, description="Cursor from the previous page")]
