"""The whole path an operator demos: create, build, agent, invoke, session, statistics."""

import asyncio

from tests.conftest import OTHER_REQUIREMENT, REQUIREMENT, Api


async def test_project_builds_into_a_running_agent_that_answers(api: Api) -> None:
    project = await api.create_project(REQUIREMENT, tags=["support"], priority=2)
    assert project["status"] == "pending"
    assert project["project_id"].startswith("proj_") and len(project["project_id"]) == 17
    assert project["latest_build"]["status"] == "queued"

    done = await api.wait_status(project["project_id"], "completed")
    assert done["progress"] == 100
    assert [s["status"] for s in done["stages_snapshot"]] == ["completed"] * 6
    assert done["latest_build"]["status"] == "succeeded"

    stages = await api.call("GET", f"/api/v1/projects/{project['project_id']}/stages")
    assert [s["name"] for s in stages] == [
        "orchestrator", "requirements_analysis", "system_architecture", "agent_design",
        "agent_developer_manager", "agent_deployer"]
    developer = await api.call(
        "GET", f"/api/v1/projects/{project['project_id']}/stages/agent_developer_manager")
    assert [s["name"] for s in developer["sub_stages"]] == [
        "tool_developer", "prompt_engineer", "agent_code_developer"]
    assert all(s["status"] == "completed" for s in developer["sub_stages"])
    assert any(a["path"].startswith("tools/") for a in developer["artifacts"])
    assert any("tool_developer completed" in line["message"] for line in developer["logs"])

    artifacts = await api.call("GET", f"/api/v1/projects/{project['project_id']}/artifacts")
    paths = {a["path"] for a in artifacts["items"]}
    assert {"requirements/requirements.md", "architecture/architecture.md",
            "design/agent_design.json", "prompts/system_prompt.md"} <= paths
    agent_code = next(p for p in paths if p.startswith("agent/"))
    code = await api.call("GET", f"/api/v1/projects/{project['project_id']}/artifacts/{agent_code}")
    compile(code["content"], agent_code, "exec")

    agents = await api.call("GET", "/api/v1/agents", params={"project_id": project["project_id"]})
    agent = agents["items"][0]
    assert agent["status"] == "running"
    assert agent["agent_id"] == f"{project['project_id']}:{agent['agent_name']}"
    assert agent["category"] == "customer_support"

    answer = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/invoke",
                            json={"input_text": "Where is my refund for order 7?", "enable_trace": True})
    assert answer["status"] == "success"
    assert answer["output"].startswith("[offline provider]")
    assert "lookup_order" in answer["output"]
    assert answer["invocation_id"].startswith("inv_")
    assert [step["step"] for step in answer["trace"]] == ["history", "tools", "model"]
    assert answer["trace"][1]["offered"] == [] and "lookup_order" in answer["trace"][1]["designed"]
    assert answer["tokens_estimated"] is True and answer["output_tokens"] > 0

    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201,
                             json={"display_name": "demo"})
    first = await api.call("POST", f"/api/v1/sessions/{session['session_id']}/messages", expect=201,
                           json={"content": "Hello, I have a question"})
    second = await api.call("POST", f"/api/v1/sessions/{session['session_id']}/messages", expect=201,
                            json={"content": "Please search the knowledge base"})
    assert "Turn 1" in first["assistant_message"]["content"]
    assert "Turn 2" in second["assistant_message"]["content"]
    assert "Hello, I have a question" in second["assistant_message"]["content"]
    messages = await api.call("GET", f"/api/v1/sessions/{session['session_id']}/messages")
    assert [m["role"] for m in messages["items"]] == ["user", "assistant", "user", "assistant"]

    stored = await api.call("GET", f"/api/v1/agents/{agent['agent_id']}")
    assert stored["runtime_stats"]["total_invocations"] == 3
    assert stored["runtime_stats"]["successful_invocations"] == 3
    assert stored["runtime_stats"]["failed_invocations"] == 0

    overview = await api.call("GET", "/api/v1/statistics/overview")
    assert {key: overview[key] for key in (
        "total_agents", "running_agents", "offline_agents", "total_builds", "successful_builds",
        "failed_builds", "active_builds", "success_rate", "today_calls", "total_invocations")} == {
        "total_agents": 1, "running_agents": 1, "offline_agents": 0, "total_builds": 1,
        "successful_builds": 1, "failed_builds": 0, "active_builds": 0, "success_rate": 100.0,
        "today_calls": 3, "total_invocations": 3}
    assert overview["avg_build_time_minutes"] > 0
    # Every /api/v1 request so far, this one included, flushed or still in memory.
    assert overview["today_api_calls"] == api.api_requests


async def test_two_requirements_give_visibly_different_agents(api: Api) -> None:
    first, second = await asyncio.gather(api.built_agent(REQUIREMENT), api.built_agent(OTHER_REQUIREMENT))
    assert first["agent_name"] != second["agent_name"]
    assert (first["category"], second["category"]) == ("customer_support", "data_analysis")
    assert set(first["capabilities"]).isdisjoint(second["capabilities"])
    assert {t["name"] for t in first["tools"]}.isdisjoint({t["name"] for t in second["tools"]})
    assert first["system_prompt"] != second["system_prompt"]
    assert all(tool["parameters"] for tool in first["tools"] + second["tools"])
