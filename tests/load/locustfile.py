"""Load scenario for the Nexus-AI Platform API (the operator's guide's three tasks, plus the
writes that make them meaningful).

    locust -f tests/load/locustfile.py --host http://localhost:8000

Against a server that needs keys (AUTH_MODE=api_key, production's default), put a key in
NEXUS_API_KEY: every request then sends `Authorization: Bearer <key>`. The scenario creates
projects and invokes agents and deletes nothing, so a builder's key is enough:

    NEXUS_API_KEY=$(nexus-ai keys create --tenant load --role builder --name locust) \
        locust -f tests/load/locustfile.py --host http://localhost:8000

Every id used exists: each user creates a project at start and reads ids from the API, so
the load measures real reads and invocations rather than 404s.
"""

import os
import random

from locust import HttpUser, between, task

REQUIREMENTS = (
    "Build an agent that triages customer support tickets and answers refund questions",
    "Create an agent that builds weekly sales reports and forecasts revenue from CSV data",
    "An agent that reviews Python pull requests on GitHub and suggests tests for bugs",
    "Schedule meetings from email threads and send calendar reminders to attendees",
    "Summarize research papers on a topic and format citations for a literature review",
)

# Unset or empty: no key is sent (a development server, AUTH_MODE=none).
API_KEY = os.environ.get("NEXUS_API_KEY", "").strip()


class APIUser(HttpUser):
    wait_time = between(1, 3)

    def on_start(self) -> None:
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"
        self.project_ids: list[str] = []
        self.agent_ids: list[str] = []
        self.create_project()

    @task(3)
    def list_projects(self) -> None:
        response = self.client.get("/api/v1/projects", params={"limit": 20})
        if response.ok:
            ids = [item["project_id"] for item in response.json()["data"]["items"]]
            self.project_ids = list(dict.fromkeys(self.project_ids + ids))[-100:]

    @task(2)
    def get_project(self) -> None:
        if self.project_ids:
            self.client.get(f"/api/v1/projects/{random.choice(self.project_ids)}",
                            name="/api/v1/projects/{project_id}")

    @task(1)
    def get_statistics(self) -> None:
        self.client.get("/api/v1/statistics/overview")

    @task(1)
    def create_project(self) -> None:
        response = self.client.post("/api/v1/projects", json={
            "requirement": random.choice(REQUIREMENTS), "user_id": "load-test", "tags": ["load"]})
        if response.ok:
            self.project_ids.append(response.json()["data"]["project_id"])

    @task(2)
    def invoke_agent(self) -> None:
        if not self.agent_ids:
            response = self.client.get("/api/v1/agents", params={"status": "running", "limit": 50})
            if response.ok:
                self.agent_ids = [agent["agent_id"] for agent in response.json()["data"]["items"]]
        if self.agent_ids:
            self.client.post(f"/api/v1/agents/{random.choice(self.agent_ids)}/invoke",
                             json={"input_text": "Summarize what you can do for me"},
                             name="/api/v1/agents/{agent_id}/invoke")
