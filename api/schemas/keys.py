"""The API keys routes' bodies and answers (an admin's, for its own tenant)."""

from typing import Literal

from pydantic import ConfigDict, Field

from api.schemas.common import Name, StrictModel
from api.schemas.envelope import Record, TIMESTAMP_EXAMPLE


class KeyCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "builder", "name": "ci-bot", "expires_days": 90}]})

    role: Literal["viewer", "builder", "admin"]
    name: Name | None = Field(default=None, description="A label: the `user_id` of what the key does")
    expires_days: float | None = Field(default=None, gt=0, le=3650, description="Default: never")


_KEY = {"key_id": "d4fd6ffe0a8799c1", "tenant_id": "acme", "role": "builder", "name": "ci-bot",
        "created_at": TIMESTAMP_EXAMPLE, "expires_at": None, "revoked_at": None}


class ApiKeyPublic(Record):
    """A key as listed: never its secret."""

    model_config = ConfigDict(json_schema_extra={"examples": [_KEY]})

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    tenant_id: str | None = Field(description="null for an operator key")
    role: Literal["viewer", "builder", "admin", "operator"]
    name: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class KeyCreated(ApiKeyPublic):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        **_KEY, "token": "nxk_d4fd6ffe0a8799c1_" + "x" * 43}]})

    token: str = Field(description="The key to send (`Authorization: Bearer <token>`): shown this once")


class KeyList(Record):
    items: list[ApiKeyPublic]
    count: int
