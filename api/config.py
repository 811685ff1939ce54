"""Service settings: one class, read once from the environment and `.env`."""

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# A browser's Origin: scheme://host[:port], lower case, no path (and no trailing slash).
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9_.~%!$&'()*+,;=-]+)(:[0-9]{1,5})?")


class Settings(BaseSettings):
    # Unknown keys in `.env` (other tools' settings, AWS_* variables) must not stop start-up.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Literal["development", "production"] = "development"
    debug: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_dir: Path = Path("./logs")
    log_stdout: bool = False
    # Successful probe requests would drown the access log at one line every few seconds per
    # orchestrator; failing probes are always logged.
    log_health_requests: bool = False
    # The audit log's refusal lines: at most one per client address and reason (failed
    # authentications) or per key and action (denials) in this window, then one line counting
    # the rest (docs/SECURITY.md, "Audit trail"). 0: a line for every refusal.
    audit_refusal_window_seconds: float = Field(default=60.0, ge=0, le=3600)

    # Unset: 0.0.0.0 with API keys, 127.0.0.1 without (AUTH_MODE=none must not serve a network).
    api_host: str | None = None
    api_port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    # After SIGTERM, keep serving (with /health/ready failing) this long before closing the
    # listener, so that load balancers stop routing here first.
    shutdown_drain_seconds: float = Field(default=0.0, ge=0, le=300)

    data_dir: Path = Path("./data")
    storage_backend: Literal["sqlite", "dynamodb"] = "sqlite"
    slow_query_threshold_seconds: float = Field(default=1.0, ge=0)

    # DynamoDB: region and credentials also come from the standard AWS chain
    # (AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE, instance roles, ...).
    dynamodb_region: str | None = None
    dynamodb_endpoint_url: str | None = None
    dynamodb_table_prefix: str = "nexus_ai_"
    dynamodb_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    dynamodb_read_timeout_seconds: float = Field(default=5.0, gt=0)
    dynamodb_max_attempts: int = Field(default=5, ge=1)
    # botocore's retry mode: `adaptive` also rate-limits the client while it is throttled.
    dynamodb_retry_mode: Literal["standard", "adaptive"] = "standard"

    model_provider: Literal["offline", "openai", "bedrock"] = "offline"
    offline_stage_delay_seconds: float = Field(default=0.2, ge=0)
    # OpenAI-compatible endpoints (OpenAI, Ollama, vLLM, llama.cpp's llama-server, LiteLLM).
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    # Bedrock: the region comes from the standard AWS chain (AWS_REGION, the profile, ...).
    bedrock_model_id: str | None = None
    # The model of builds and of invocations; BUILD_MODEL / AGENT_MODEL override it for one.
    model_name: str | None = None
    build_model: str | None = None
    agent_model: str | None = None
    # One attempt's deadline; a call with its retries is bounded by
    # (MODEL_MAX_RETRIES + 1) x this plus the backoff between attempts.
    model_timeout_seconds: float = Field(default=60.0, gt=0)
    model_max_retries: int = Field(default=2, ge=0, le=10)
    # Model calls in flight in one process, builds and invocations together.
    model_max_concurrency: int = Field(default=8, ge=1)
    # Unset: the endpoint's default.
    model_temperature: float | None = Field(default=None, ge=0, le=2)
    model_max_output_tokens: int = Field(default=1024, ge=16, le=65536)
    # Earlier session turns an invocation sends, at most (oldest dropped first).
    agent_history_token_budget: int = Field(default=2000, ge=0)
    max_concurrent_builds: int = Field(default=4, ge=1)
    # False: this API instance serves without running builds, which `nexus-ai worker` processes
    # sharing its store run instead (docs/MONITORING.md, "Build workers").
    run_builds: bool = True
    # Where `nexus-ai worker` serves its probes and /metrics.
    worker_host: str | None = None  # unset: as API_HOST
    worker_port: int = Field(default=8001, ge=1, le=65535)
    # A build whose owner stops renewing its lease for this long is taken over (crash recovery).
    build_lease_seconds: float = Field(default=10.0, gt=0)
    api_calls_flush_seconds: float = Field(default=5.0, gt=0)

    # Access control (docs/SECURITY.md). Unset: api_key in production, none in development.
    auth_mode: Literal["api_key", "none"] | None = None
    # An operator credential for /metrics and /health/detailed without a key (Prometheus).
    operator_token: SecretStr | None = None
    # How long a process trusts a key it checked: a revoked key stops working within this.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Rate limits and quotas of API keys' requests, per tenant and per key, shared by every
    # process through the store (docs/SECURITY.md, "Rate limits and quotas"). 0: no limit.
    tenant_requests_per_minute: int = Field(default=6000, ge=0)
    key_requests_per_minute: int = Field(default=1200, ge=0)
    tenant_builds_per_hour: int = Field(default=120, ge=0)
    key_builds_per_hour: int = Field(default=60, ge=0)
    tenant_invocations_in_flight: int = Field(default=32, ge=0)
    key_invocations_in_flight: int = Field(default=8, ge=0)
    # Model tokens (input and output) per UTC day: a tenant's builds' and invocations', a
    # key's invocations'. Unset by default: what a token costs depends on the model.
    tenant_tokens_per_day: int = Field(default=0, ge=0)
    key_tokens_per_day: int = Field(default=0, ge=0)
    # Failed authentications a client address makes per minute before it is answered 429.
    auth_failures_per_minute: int = Field(default=60, ge=0)
    # Browser clients (CORS): the origins allowed to call the API, comma-separated
    # (https://app.example.com,http://localhost:3000), or `*` for any. Empty: no CORS headers
    # at all. Never with credentials: keys travel in headers, not cookies (docs/SECURITY.md).
    cors_allowed_origins: Annotated[list[str], NoDecode] = []
    # uvicorn's connection cap (limit_concurrency), per process: a request whose headers arrive
    # while this many other connections are open (idle and half-sent ones too) is answered 503
    # by uvicorn itself. Unset: no cap (docs/SECURITY.md, "Slow clients" says why).
    max_connections: int | None = Field(default=None, ge=1)
    # uvicorn's timeout_keep_alive: an idle connection is closed this long after its last answer.
    keep_alive_timeout_seconds: int = Field(default=5, ge=1, le=3600)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve_auth_and_bind(self) -> "Settings":
        if self.auth_mode is None:
            self.auth_mode = "api_key" if self.environment == "production" else "none"
        loopback = "127.0.0.1" if self.auth_mode == "none" else "0.0.0.0"
        self.api_host = self.api_host or loopback
        self.worker_host = self.worker_host or self.api_host
        for name in ("api_host", "worker_host"):
            if self.auth_mode == "none" and not is_loopback(getattr(self, name)):
                raise ValueError(
                    f"AUTH_MODE=none serves everyone who can reach {name.upper()}="
                    f"{getattr(self, name)}: listen on 127.0.0.1 (the default without keys) or "
                    "set AUTH_MODE=api_key and create a key (nexus-ai keys create)")
        return self

    @field_validator("environment", "storage_backend", "model_provider", "dynamodb_retry_mode",
                     "auth_mode", mode="before")
    @classmethod
    def _lower_choice(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # NoDecode hands the environment's text over as it is, rather than parsed as JSON.
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("cors_allowed_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        # Browsers send the origin in lower case, and Starlette compares it as a string: an
        # origin with a path or a trailing slash would never match, so it is refused here.
        origins = [origin.lower() for origin in origins]
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"CORS_ALLOWED_ORIGINS: {origin!r} is not an origin "
                                 "(scheme://host[:port], no path, no trailing slash) nor *")
        if "*" in origins and len(origins) > 1:
            raise ValueError("CORS_ALLOWED_ORIGINS: * allows every origin; list none beside it")
        return origins

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "nexus-ai.db"

    def model_for(self, operation: str) -> str:
        """The model a build (`build`) or an invocation (`invoke`) asks for."""
        chosen = self.build_model if operation == "build" else self.agent_model
        default = self.bedrock_model_id if self.model_provider == "bedrock" else self.model_name
        return chosen or default or self.model_provider


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@lru_cache
def get_settings() -> Settings:
    return Settings()
