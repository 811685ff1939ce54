"""A stage whose generated code does not compile, or whose model fails, fails the build clearly."""

from typing import Any

import pytest

from api.providers.base import ModelError, ModelProvider, ModelRequest
from api.providers.offline import OfflineProvider
from tests.conftest import Api


class ScriptedModel(OfflineProvider):
    """Stands in for a hosted model that misbehaves at one step."""

    def __init__(self, *, broken_step: str, how: str) -> None:
        super().__init__(stage_delay_seconds=0)
        self.broken_step = broken_step
        self.how = how
        self.broken_answers = 0

    def _answer(self, request: ModelRequest) -> str:
        answer = super()._answer(request)
        if request.purpose != self.broken_step:
            return answer
        self.broken_answers += 1
        if self.how == "raise":
            raise ModelError("model endpoint answered 500")
        if self.how == "duplicate argument":  # parses, and only the compiler refuses it
            return "```python\nfrom typing import Any\n\ndef twice(agency: str, agency: str) -> None:\n    pass\n```"
        return "```python\ndef broken(:\n    pass\n```"


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> ModelProvider:
    return ScriptedModel(**request.param)


@pytest.mark.parametrize("provider", [{"broken_step": "tool_developer", "how": "bad code"}], indirect=True)
async def test_code_that_does_not_compile_fails_the_build(api: Api, provider: ScriptedModel) -> None:
    project_id = (await api.create_project())["project_id"]
    failed = await api.wait_status(project_id, "failed")
    error = failed["latest_build"]["error"]
    assert error["stage"] == "agent_developer_manager"
    assert error["code"] == "GENERATED_CODE_INVALID"
    assert error["message"].startswith("tool_developer: still invalid after 2 repair rounds: tools/")
    assert "line 1" in error["message"] and "def broken(:" in error["message"]
    # The first answer and both repair rounds were asked for, and their tokens kept.
    assert provider.broken_answers == 3
    stage = await api.call("GET", f"/api/v1/projects/{project_id}/stages/agent_developer_manager")
    assert stage["status"] == "failed"
    assert [s["status"] for s in stage["sub_stages"]] == ["failed", "pending", "pending"]
    assert stage["sub_stages"][0]["model_usage"]["calls"] == 3
    assert stage["sub_stages"][0]["model_usage"]["output_tokens"] > 0
    assert any(line["level"] == "ERROR" and "line 1" in line["message"] for line in stage["logs"])
    # The broken code was never stored as an artifact, and no agent was registered.
    artifacts = await api.call("GET", f"/api/v1/projects/{project_id}/artifacts")
    assert not any(a["path"].startswith("tools/") for a in artifacts["items"])
    assert (await api.call("GET", "/api/v1/agents", params={"project_id": project_id}))["count"] == 0
    assert failed["progress"] < 100
    daily = await api.call("GET", "/api/v1/statistics/builds")
    assert daily[-1]["failed_builds"] == 1
    assert daily[-1]["builds_by_stage"] == {"agent_developer_manager": 1}


@pytest.mark.parametrize("provider", [{"broken_step": "tool_developer", "how": "duplicate argument"}],
                         indirect=True)
async def test_code_the_compiler_refuses_after_it_parsed_goes_back_for_repair(
        api: Api, provider: ScriptedModel) -> None:
    project_id = (await api.create_project())["project_id"]
    failed = await api.wait_status(project_id, "failed")
    error = failed["latest_build"]["error"]
    assert error["code"] == "GENERATED_CODE_INVALID"
    assert "line 3: duplicate argument 'agency' in function definition" in error["message"]
    assert provider.broken_answers == 3


@pytest.mark.parametrize("provider", [{"broken_step": "system_architecture", "how": "raise"}], indirect=True)
async def test_a_failing_model_fails_its_stage(api: Api) -> None:
    project_id = (await api.create_project())["project_id"]
    failed = await api.wait_status(project_id, "failed")
    assert failed["latest_build"]["error"] == {
        "stage": "system_architecture", "code": "MODEL_ERROR",
        "message": "system_architecture: model endpoint answered 500"}
    statuses = [s["status"] for s in failed["stages_snapshot"]]
    assert statuses == ["completed", "completed", "failed", "pending", "pending", "pending"]
    overview = await api.call("GET", "/api/v1/statistics/overview")
    assert (overview["failed_builds"], overview["success_rate"], overview["active_builds"]) == (1, 0.0, 0)
