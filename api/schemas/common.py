"""Shared request shapes: strict models and the pagination query."""

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict, StringConstraints


class StrictModel(BaseModel):
    # An unknown field is a typo the client wants to hear about, not silently dropped.
    model_config = ConfigDict(extra="forbid")


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]

Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
LastKey = Annotated[str | None, Query(max_length=1024, description="Cursor from the previous page")]
