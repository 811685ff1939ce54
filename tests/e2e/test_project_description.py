"""A project's optional description, the field issue 11 added end to end (the record, the
SQLite migration, the DynamoDB attributes derived from the record, the API): kept as given on
both backends, null when not given, refused when too long."""

from tests.conftest import REQUIREMENT, Api

DESCRIPTION = "First-line triage for the support inbox, in English and German"


async def test_a_description_is_kept_and_shown_wherever_the_project_is(api: Api) -> None:
    created = await api.create_project(REQUIREMENT, description=f"  {DESCRIPTION} ")
    assert created["description"] == DESCRIPTION
    project_id = created["project_id"]
    assert (await api.project(project_id))["description"] == DESCRIPTION
    listed = await api.call("GET", "/api/v1/projects")
    assert [(p["project_id"], p["description"]) for p in listed["items"]] == [(project_id, DESCRIPTION)]


async def test_a_project_created_without_one_has_none(api: Api) -> None:
    created = await api.create_project(REQUIREMENT)
    assert created["description"] is None
    assert (await api.project(created["project_id"]))["description"] is None


async def test_a_description_over_2000_characters_is_refused_and_nothing_is_stored(api: Api) -> None:
    refused = await api.call("POST", "/api/v1/projects", expect=400,
                             json={"requirement": REQUIREMENT, "description": "x" * 2001})
    assert refused["code"] == "VALIDATION_ERROR"
    assert [detail["field"] for detail in refused["details"]] == ["description"]
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 0
