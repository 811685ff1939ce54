"""The request's tenant, its API key's, scopes every route: what one tenant wrote, another
neither reads, lists, invokes nor deletes (404, as if it did not exist), and each sees its own
statistics."""

from pathlib import Path
from typing import Any

from api.database.store import DEFAULT_TENANT
from tests.conftest import Api, make_settings, serving


async def use_key(app: Any, api: Api, tenant_id: str, role: str = "admin") -> None:
    """Make the client act with a new key of `tenant_id`."""
    _, token = await app.state.key_service.create(tenant_id=tenant_id, role=role)
    api.client.headers["Authorization"] = f"Bearer {token}"


async def test_every_route_is_scoped_by_the_requests_tenant(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, offline_stage_delay_seconds=0, auth_mode="api_key")
    async with serving(settings) as (app, api):
        await use_key(app, api, DEFAULT_TENANT)
        project = await api.create_project()
        assert project["tenant_id"] == DEFAULT_TENANT
        built = await api.wait_status(project["project_id"], "completed")
        [agent] = (await api.call("GET", "/api/v1/agents"))["items"]
        session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions",
                                 expect=201, json={})
        await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/invoke",
                       json={"input_text": "What can you do?"})

        default_key = api.client.headers["Authorization"]
        await use_key(app, api, "globex")
        project_id, agent_id = project["project_id"], agent["agent_id"]
        for path in (f"/api/v1/projects/{project_id}", f"/api/v1/projects/{project_id}/builds",
                     f"/api/v1/projects/{project_id}/stages", f"/api/v1/projects/{project_id}/artifacts",
                     f"/api/v1/agents/{agent_id}", f"/api/v1/agents/{agent_id}/invocations",
                     f"/api/v1/agents/{agent_id}/sessions", f"/api/v1/sessions/{session['session_id']}"):
            assert (await api.call("GET", path, expect=404))["code"] == "RESOURCE_NOT_FOUND", path
        for path in ("/api/v1/projects", "/api/v1/agents"):
            assert (await api.call("GET", path))["items"] == [], path
        await api.call("POST", f"/api/v1/agents/{agent_id}/invoke", expect=404,
                       json={"input_text": "Whose agent is this?"})
        await api.call("PUT", f"/api/v1/projects/{project_id}/control", expect=404,
                       json={"action": "restart"})
        await api.call("DELETE", f"/api/v1/agents/{agent_id}", expect=404)
        await api.call("DELETE", f"/api/v1/projects/{project_id}", expect=404)
        overview = await api.call("GET", "/api/v1/statistics/overview")
        assert (overview["total_builds"], overview["total_agents"], overview["total_invocations"]) == (
            0, 0, 0)
        own = await api.create_project()
        assert own["tenant_id"] == "globex"
        await api.wait_status(own["project_id"], "completed")
        assert [p["project_id"] for p in (await api.call("GET", "/api/v1/projects"))["items"]] == [
            own["project_id"]]

        # The default tenant's records are untouched, and its statistics are its own.
        api.client.headers["Authorization"] = default_key
        assert (await api.project(project_id))["latest_build_id"] == built["latest_build_id"]
        assert (await api.call("GET", f"/api/v1/agents/{agent_id}"))["runtime_stats"][
            "total_invocations"] == 1
        assert [p["project_id"] for p in (await api.call("GET", "/api/v1/projects"))["items"]] == [
            project_id]
        overview = await api.call("GET", "/api/v1/statistics/overview")
        assert (overview["total_builds"], overview["total_agents"], overview["total_invocations"]) == (
            1, 1, 1)
