"""Choose the model provider named by MODEL_PROVIDER."""

from api.config import Settings
from api.core.aws import standard_region
from api.providers.base import ModelProvider
from api.providers.offline import OfflineProvider


class ProviderUnavailable(RuntimeError):
    """MODEL_PROVIDER names a provider this build cannot start."""


def create_provider(settings: Settings) -> ModelProvider:
    if settings.model_provider == "offline":
        return OfflineProvider(stage_delay_seconds=settings.offline_stage_delay_seconds)
    if settings.model_provider == "openai":
        return _openai(settings)
    if settings.model_provider == "bedrock":
        return _bedrock(settings)
    raise ProviderUnavailable(
        f"MODEL_PROVIDER={settings.model_provider} is not available in this release; "
        "set MODEL_PROVIDER=offline (the default)."
    )


def _openai(settings: Settings) -> ModelProvider:
    # Imported here so that the offline default never loads the SDK.
    from api.providers.openai_compatible import OPENAI_BASE_URL, OpenAICompatibleProvider

    if not settings.openai_base_url and not settings.openai_api_key:
        raise ProviderUnavailable(
            "MODEL_PROVIDER=openai is not available without OPENAI_BASE_URL or OPENAI_API_KEY: "
            "set OPENAI_BASE_URL to an OpenAI-compatible endpoint (Ollama, vLLM, LiteLLM, ...) "
            "or OPENAI_API_KEY for OpenAI itself.")
    _require_models(settings, "MODEL_NAME")
    return OpenAICompatibleProvider(
        base_url=settings.openai_base_url or OPENAI_BASE_URL, api_key=settings.openai_api_key,
        timeout_seconds=settings.model_timeout_seconds, max_retries=settings.model_max_retries)


def _bedrock(settings: Settings) -> ModelProvider:
    # Imported here so that the other providers never load aiobotocore's Bedrock clients.
    from api.providers.bedrock import BedrockProvider

    _require_models(settings, "BEDROCK_MODEL_ID")
    region = standard_region()
    if not region:
        raise ProviderUnavailable(
            "MODEL_PROVIDER=bedrock is not available without an AWS region; set AWS_REGION "
            "(or AWS_DEFAULT_REGION, or a region in the AWS profile).")
    return BedrockProvider(
        model_id=settings.model_for("build"), region=region,
        timeout_seconds=settings.model_timeout_seconds, max_retries=settings.model_max_retries)


def _require_models(settings: Settings, default_setting: str) -> None:
    """Builds and invocations each need a model: the default one, or both of their own."""
    default = settings.bedrock_model_id if settings.model_provider == "bedrock" else settings.model_name
    if not default and not (settings.build_model and settings.agent_model):
        raise ProviderUnavailable(
            f"MODEL_PROVIDER={settings.model_provider} is not available without a model: set "
            f"{default_setting}, or both BUILD_MODEL and AGENT_MODEL.")
