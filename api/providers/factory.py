"""Choose the model provider named by MODEL_PROVIDER."""

from api.config import Settings
from api.providers.base import ModelProvider
from api.providers.offline import OfflineProvider


class ProviderUnavailable(RuntimeError):
    """MODEL_PROVIDER names a provider this build cannot start."""


def create_provider(settings: Settings) -> ModelProvider:
    if settings.model_provider == "offline":
        return OfflineProvider(stage_delay_seconds=settings.offline_stage_delay_seconds)
    raise ProviderUnavailable(
        f"MODEL_PROVIDER={settings.model_provider} is not available in this release; "
        "set MODEL_PROVIDER=offline (the default)."
    )
