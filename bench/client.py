"""The few API calls the items make to set themselves up (not measured)."""

import asyncio
import time
from typing import Any

import httpx

REQUIREMENT = "Build an agent that triages customer support tickets and answers refund questions"


def _data(response: httpx.Response) -> Any:
    response.raise_for_status()
    return response.json()["data"]


def create_project(base_url: str, requirement: str = REQUIREMENT, *,
                   headers: dict[str, str] | None = None) -> str:
    return _data(httpx.post(f"{base_url}/api/v1/projects", json={"requirement": requirement},
                            headers=headers, timeout=30))["project_id"]


def overview(base_url: str, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return _data(httpx.get(f"{base_url}/api/v1/statistics/overview", headers=headers, timeout=30))


def wait_for_builds(base_url: str, *, finished: int, timeout: float, interval: float = 0.2,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Poll the statistics until `finished` builds have succeeded or failed in total."""
    deadline = time.monotonic() + timeout
    while True:
        stats = overview(base_url, headers=headers)
        if stats["successful_builds"] + stats["failed_builds"] >= finished:
            return stats
        if time.monotonic() > deadline:
            raise RuntimeError(f"builds did not finish within {timeout:g} s: {stats}")
        time.sleep(interval)


def built_project(base_url: str, timeout: float = 120.0, *,
                  headers: dict[str, str] | None = None) -> str:
    """A project whose build has completed (the offline provider, no stage delay)."""
    before = overview(base_url, headers=headers)
    project_id = create_project(base_url, headers=headers)
    wait_for_builds(base_url, finished=before["successful_builds"] + before["failed_builds"] + 1,
                    timeout=timeout, headers=headers)
    project = _data(httpx.get(f"{base_url}/api/v1/projects/{project_id}", headers=headers,
                              timeout=30))
    if project["status"] != "completed":
        raise RuntimeError(f"set-up build did not complete: {project['status']}")
    return project_id


async def _create_many(base_url: str, count: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def create() -> None:
            async with semaphore:
                response = await client.post("/api/v1/projects", json={"requirement": REQUIREMENT})
                response.raise_for_status()

        await asyncio.gather(*(create() for _ in range(count)))


def create_projects(base_url: str, count: int, concurrency: int = 8) -> None:
    asyncio.run(_create_many(base_url, count, concurrency))


def walk_pages(base_url: str, *, pages: int, limit: int) -> str:
    """The cursor of page `pages` + 1 of the project listing, found by following last_key."""
    last_key = None
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for _ in range(pages):
            params: dict[str, Any] = {"limit": limit}
            if last_key:
                params["last_key"] = last_key
            last_key = _data(client.get("/api/v1/projects", params=params))["last_key"]
            if last_key is None:
                raise RuntimeError("the listing ended before the requested depth")
    assert last_key is not None
    return last_key
