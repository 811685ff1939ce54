"""The /metrics exposition, parsed, after known traffic on the real app (one process)."""

from pathlib import Path

import httpx

from api.main import create_app
from tests.conftest import Api, make_settings
from tests.observability.conftest import Samples, parse_samples, sample


async def scrape(api: Api) -> Samples:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse_samples(response.text)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


async def test_http_series_count_a_known_request_mix_exactly(api: Api) -> None:
    before = await scrape(api)
    for _ in range(3):
        await api.client.get("/api/v1/projects")
    for _ in range(2):
        await api.client.get("/api/v1/projects/proj_000000000000")
    await api.client.delete("/api/v1/statistics/overview")
    await api.client.get("/does/not/exist")
    await api.client.get("/another/unknown/path")
    await api.client.request("BREW", "/api/v1/projects")
    for path in ("/health", "/health/live", "/health/ready", "/health/detailed", "/metrics"):
        await api.client.get(path)
    after = await scrape(api)

    expected = {
        ("GET", "/api/v1/projects", "200"): 3,
        ("GET", "/api/v1/projects/{project_id}", "404"): 2,
        ("DELETE", "/api/v1/statistics/overview", "405"): 1,
        ("GET", "<unmatched>", "404"): 2,
        ("OTHER", "/api/v1/projects", "405"): 1,
    }
    for (method, route, status), count in expected.items():
        assert delta(before, after, "http_requests_total", method=method, route=route,
                     status=status) == count, (method, route, status)
    changed = {dict(labels)["route"] for (name, labels), value in after.items()
               if name == "http_requests_total" and value != before.get((name, labels), 0)}
    assert changed == {"/api/v1/projects", "/api/v1/projects/{project_id}",
                       "/api/v1/statistics/overview", "<unmatched>"}
    assert delta(before, after, "http_request_duration_seconds_count",
                 method="GET", route="/api/v1/projects") == 3
    assert delta(before, after, "http_request_duration_seconds_bucket",
                 method="GET", route="/api/v1/projects", le="10.0") == 3
    assert sample(after, "http_requests_in_progress") == 0


async def test_builds_invocations_and_database_series(api: Api) -> None:
    before = await scrape(api)
    agent = await api.built_agent()
    await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/invoke", json={"input_text": "hello"})
    after = await scrape(api)

    assert delta(before, after, "builds_total", status="succeeded") == 1
    assert delta(before, after, "build_duration_seconds_count", status="succeeded") == 1
    assert sample(after, "builds_active") == 0
    for stage in ("orchestrator", "requirements_analysis", "system_architecture", "agent_design",
                  "tool_developer", "prompt_engineer", "agent_code_developer", "agent_deployer"):
        assert delta(before, after, "build_stage_duration_seconds_count", stage=stage) == 1, stage
    assert delta(before, after, "agent_invocations_total", status="success") == 1
    assert delta(before, after, "agent_invocation_duration_seconds_count") == 1
    assert sample(after, "build_success_rate") == 100.0
    assert sample(after, "database_up", backend="sqlite") == 1
    assert sample(after, "nexus_api_info", version="1.0.0") == 1
    assert delta(before, after, "db_queries_total", operation="create_project", outcome="success") == 1
    assert delta(before, after, "db_query_duration_seconds_count", operation="create_project") == 1
    # A build writes once per step boundary: each of its 8 steps is started by one write and
    # completed by one that carries the step's log lines and artifacts, plus the completion
    # of the stage with sub-stages.
    assert delta(before, after, "db_queries_total", operation="update_build", outcome="success") == 17
    assert sample(after, "process_memory_percent") > 0
    assert ("process_cpu_percent", frozenset()) in after
    assert ("process_resident_memory_bytes", frozenset()) in after  # prometheus_client's own


async def test_no_success_rate_before_any_build_finished(api: Api) -> None:
    samples = await scrape(api)
    assert not [key for key in samples if key[0] == "build_success_rate"]
    assert sample(samples, "database_up", backend="sqlite") == 1


async def test_slow_queries_are_counted(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, slow_query_threshold_seconds=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            before = parse_samples((await client.get("/metrics")).text)
            await client.get("/api/v1/projects")
            after = parse_samples((await client.get("/metrics")).text)
    # Each scrape pings the store and reads the counters; the request lists projects.
    assert delta(before, after, "db_slow_queries_total") >= 3
    assert delta(before, after, "db_queries_total", operation="list_projects", outcome="success") == 1


async def test_openmetrics_when_the_scraper_asks_for_it(api: Api) -> None:
    response = await api.client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
