"""/docs and /redoc in headless Chromium on a host without internet (no name resolves but the
loopback address): the real service serves their scripts and styles, both pages render every
operation of the API, and nothing they load comes from anywhere else."""

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.routers.docs import ASSETS_PATH
from tests.conftest import ServerProcess
from tests.observability.conftest import Samples, parse_samples
from tests.tooling import tool

PAGES = ("/docs", "/redoc")
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
ABSOLUTE_URL = re.compile(r"https?://[^\s\"'<>]+")


@dataclass
class Page:
    html: str  # as served
    dom: str  # once its scripts have run
    requested: list[str]  # every URL the page asked for, from Chromium's network log
    blocked: list[str]  # the console's Content-Security-Policy violations


@dataclass
class Visit:
    pages: dict[str, Page]
    before: Samples
    after: Samples


def requested_by_page(net_log: Path, origin: str) -> list[str]:
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # The page's requests have its origin for initiator, wherever they go; Chromium's own
    # (updates, accounts, autofill) and the navigation itself have none.
    return [event["params"]["url"] for event in log["events"]
            if event["type"] == start and event.get("params", {}).get("initiator") == origin]


def open_page(chromium: str, server: ServerProcess, path: str, workdir: Path) -> Page:
    net_log = workdir / "net-log.json"
    result = subprocess.run([
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={workdir / 'profile'}",
        # The network off: no name resolves but the service's loopback address.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={net_log}", "--enable-logging=stderr", "--v=0",
        # Virtual time stands still while a request is pending, then fast-forwards the page's
        # timers: the DOM is dumped once the page has loaded and rendered, without a sleep.
        "--virtual-time-budget=15000", "--dump-dom", server.base_url + path,
    ], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return Page(html=httpx.get(server.base_url + path).text, dom=result.stdout,
                requested=requested_by_page(net_log, server.base_url),
                blocked=[line for line in result.stderr.splitlines()
                         if "Content Security Policy" in line])


def scrape(server: ServerProcess) -> Samples:
    return parse_samples(httpx.get(f"{server.base_url}/metrics").text)


@pytest.fixture(scope="module")
def chromium() -> str:
    return tool("chromium", "apt-get install chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("docs-pages"), {}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def operations(server: ServerProcess) -> dict[str, str]:
    """The path of each operation of the service's schema, by operation id."""
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    return {operation["operationId"]: path for path, methods in schema["paths"].items()
            for operation in methods.values()}


@pytest.fixture(scope="module")
def visit(chromium: str, server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Visit:
    """Both pages opened once each, between two scrapes of /metrics."""
    before = scrape(server)
    pages = {path: open_page(chromium, server, path, tmp_path_factory.mktemp(path.strip("/")))
             for path in PAGES}
    return Visit(pages=pages, before=before, after=scrape(server))


def test_swagger_ui_lists_every_operation(visit: Visit, operations: dict[str, str]) -> None:
    dom = visit.pages["/docs"].dom
    paths = re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom)
    assert "/api/v1/projects" in paths
    assert sorted(paths) == sorted(operations.values())


def test_redoc_lists_every_operation(visit: Visit, operations: dict[str, str]) -> None:
    dom = visit.pages["/redoc"].dom
    ids = set(re.findall(r'id="tag/[^"/]+/operation/([^"]+)"', dom))
    assert "projects-list_projects" in ids and ">List Projects<" in dom
    assert ids == set(operations)


@pytest.mark.parametrize("path", PAGES)
def test_nothing_is_loaded_from_elsewhere(visit: Visit, server: ServerProcess, path: str) -> None:
    page, service = visit.pages[path], server.base_url + "/"
    assert f"{ASSETS_PATH}/" in page.html
    assert [url for url in ABSOLUTE_URL.findall(page.html) if not url.startswith(service)] == []
    assert page.requested
    assert [url for url in page.requested if not url.startswith(service)] == []
    # ReDoc's menu asks Redocly's CDN for a logo, which the pages' policy refuses; a refused
    # script, style or worker of the UIs' own would break them quietly.
    assert [line for line in page.blocked if REDOCLY_LOGO not in line] == []


def test_the_pages_files_are_counted_under_one_route(visit: Visit) -> None:
    def counts(samples: Samples) -> dict[str, float]:
        totals: dict[str, float] = {}
        for (name, labels), value in samples.items():
            if name == "http_requests_total":
                route = dict(labels)["route"]
                totals[route] = totals.get(route, 0) + value
        return totals

    before, after = counts(visit.before), counts(visit.after)
    changed = {route for route, total in after.items() if total != before.get(route, 0)}
    assets = f"{ASSETS_PATH}/{{path}}"
    # Never a series per file, nor <unmatched>.
    assert changed == {"/docs", "/redoc", "/openapi.json", assets}
    # Swagger UI's script and styles, ReDoc's script (favicons as the browser sees fit).
    assert after[assets] - before.get(assets, 0) >= 3
