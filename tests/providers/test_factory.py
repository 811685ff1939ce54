"""MODEL_PROVIDER=openai: what it needs, and the provider it makes."""

from typing import Any

import pytest

from api.config import Settings
from api.providers.factory import ProviderUnavailable, create_provider
from api.providers.openai_compatible import OPENAI_BASE_URL, OpenAICompatibleProvider

MODEL_VARIABLES = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MODEL_NAME", "BUILD_MODEL", "AGENT_MODEL",
                   "BEDROCK_MODEL_ID", "MODEL_PROVIDER")


@pytest.fixture(autouse=True)
def no_model_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in MODEL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, model_provider="openai", **values)


@pytest.mark.parametrize("values, missing", [
    ({"model_name": "llama3.1"}, "without OPENAI_BASE_URL or OPENAI_API_KEY"),
    ({"openai_base_url": "http://127.0.0.1:11434/v1"}, "without a model: set MODEL_NAME, or both BUILD_MODEL and AGENT_MODEL"),
    ({"openai_api_key": "sk-x", "build_model": "gpt-4o"}, "without a model: set MODEL_NAME"),
])
def test_a_missing_setting_is_named(values: dict[str, Any], missing: str) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        create_provider(settings(**values))
    assert str(caught.value).startswith(f"MODEL_PROVIDER=openai is not available {missing}")
    assert "sk-x" not in str(caught.value)


async def test_a_key_alone_means_openai_itself() -> None:
    provider = create_provider(settings(openai_api_key="sk-x", build_model="gpt-4o", agent_model="gpt-4o-mini"))
    assert isinstance(provider, OpenAICompatibleProvider) and provider.base_url == OPENAI_BASE_URL
    await provider.close()


async def test_a_base_url_alone_needs_no_key() -> None:
    provider = create_provider(settings(openai_base_url="http://127.0.0.1:11434/v1", model_name="llama3.1",
                                        model_timeout_seconds=7, model_max_retries=3))
    assert isinstance(provider, OpenAICompatibleProvider)
    assert (provider.name, provider.base_url) == ("openai", "http://127.0.0.1:11434/v1")
    # The SDK's own attempt timeout and retry count, as the settings say.
    assert (provider._client.timeout, provider._client.max_retries) == (7, 3)
    await provider.close()


def test_bedrock_needs_a_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ProviderUnavailable, match="MODEL_PROVIDER=bedrock is not available without an AWS region"):
        create_provider(Settings(_env_file=None, model_provider="bedrock", bedrock_model_id="m"))


async def test_bedrock_takes_aws_region(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.providers.bedrock import BedrockProvider

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    provider = create_provider(Settings(_env_file=None, model_provider="bedrock",
                                        bedrock_model_id="anthropic.claude-3-haiku-20240307-v1:0"))
    assert isinstance(provider, BedrockProvider) and provider.region == "eu-west-1"
    await provider.close()
