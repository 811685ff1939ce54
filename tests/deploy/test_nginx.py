"""deploy/nginx/nexus-ai.conf run by Debian's nginx in front of a real server, on loopback:
a request passes with its request id, an event stream is not held back, and a client that
sends half its headers is cut off after client_header_timeout while the service answers.

The test runs the shipped file itself, with only the addresses and the timeouts a test needs
substituted (each substitution must match exactly one directive, so the file cannot drift
away from what is tested)."""

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, REQUIREMENT, Api, ServerProcess, free_port, wait_until
from tests.providers.scripted_openai import Answer, ScriptedOpenAI
from tests.raw_http import HALF_HEADERS, connect, is_open, read_to_close
from tests.tooling import stop_process, tool

SITE = REPO / "deploy" / "nginx" / "nexus-ai.conf"
# What Debian's /etc/nginx/nginx.conf puts around conf.d/*.conf, with every path in the test's
# directory; one process, in the foreground, as the test's user.
MAIN = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/nexus-ai.conf;
}}
"""


def nginx_binary() -> str:
    # /usr/sbin is not on every user's PATH.
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin")
    return found or tool("nginx", "apt-get install nginx")


def render(*, port: int, upstream_port: int, **directives: str) -> str:
    """The shipped file, listening on 127.0.0.1:`port`, in front of `upstream_port`, with the
    given directives' values replaced."""
    text = SITE.read_text()
    replacements = {r"^(\s*)listen 80;": rf"\1listen 127.0.0.1:{port};",
                    r"^(\s*)server 127\.0\.0\.1:8000;": rf"\1server 127.0.0.1:{upstream_port};"}
    replacements |= {rf"^(\s*){name} [^;]+;": rf"\1{name} {value};" for name, value in directives.items()}
    for pattern, replacement in replacements.items():
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count == 1, f"{pattern!r} matched {count} lines of {SITE.name}"
    return text


class Nginx:
    def __init__(self, workdir: Path, site: str) -> None:
        self.dir = workdir / f"nginx-{time.monotonic_ns()}"
        self.dir.mkdir()
        (self.dir / "nexus-ai.conf").write_text(site)
        self.config = self.dir / "nginx.conf"
        self.config.write_text(MAIN.format(dir=self.dir))
        self.error_log = self.dir / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *options: str) -> list[str]:
        return [nginx_binary(), "-p", str(self.dir), "-c", str(self.config), "-e",
                str(self.error_log), *options]

    def start(self, port: int) -> "Nginx":
        with open(self.dir / "nginx.out", "ab") as output:
            self.process = subprocess.Popen(self.command(), stdout=output, stderr=output)

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited: {(self.dir / 'nginx.out').read_text()}")
            try:
                connect(port).close()
                return True
            except OSError:
                return False
        wait_until(listening, timeout=10, what="nginx to listen")
        return self

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Callable[..., tuple[Nginx, str]]]:
    """Start nginx with the shipped file in front of `server`: (nginx, its base URL)."""
    started: list[Nginx] = []

    def start(server: ServerProcess, **directives: str) -> tuple[Nginx, str]:
        port = free_port()
        nginx = Nginx(tmp_path, render(port=port, upstream_port=server.port, **directives))
        started.append(nginx)
        return nginx.start(port), f"http://127.0.0.1:{port}"

    yield start
    for nginx in started:
        nginx.stop()


def access_lines(server: ServerProcess) -> list[dict[str, object]]:
    entries = (json.loads(line) for line in (server.log_dir / "api.log").read_text().splitlines())
    return [entry for entry in entries if entry.get("message") == "Request completed"]


def test_the_shipped_file_passes_nginx_t(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path, SITE.read_text())
    result = subprocess.run(nginx.command("-t"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_a_request_through_nginx_carries_the_request_id(
        server_factory: Callable[..., ServerProcess],
        nginx_factory: Callable[..., tuple[Nginx, str]]) -> None:
    server = server_factory()
    _, url = nginx_factory(server)
    with httpx.Client(base_url=url, timeout=10) as client:
        ready = client.get("/health/ready", headers={"X-Request-ID": "through-nginx-1"})
        assert ready.status_code == 200 and ready.headers["x-request-id"] == "through-nginx-1"
        created = client.post("/api/v1/projects", json={"requirement": REQUIREMENT})
        assert created.status_code == 201 and created.json()["success"] is True
        # Without one, the id is nginx's $request_id (the service's own are uuid4s): the same
        # id in nginx's log and the service's. A client's own X-Forwarded-For is replaced by
        # the address nginx saw.
        listed = client.get("/api/v1/projects", headers={"X-Forwarded-For": "203.0.113.7"})
        assert listed.status_code == 200
        request_id = listed.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
        # A body over the service's 1 MiB never reaches it: nginx answers 413 itself.
        too_large = client.post("/api/v1/projects", content=b"x" * (1024 * 1024 + 1),
                                headers={"Content-Type": "application/json"})
        assert too_large.status_code == 413 and too_large.headers["content-type"] == "text/html"
    lines = wait_until(lambda: [line for line in access_lines(server) if line["request_id"] == request_id],
                       timeout=10, what="the access line of the listing")
    assert [(line["status_code"], line["client_address"]) for line in lines] == [(200, "127.0.0.1")]
    assert all(line["status_code"] != 413 for line in access_lines(server))


async def test_an_event_stream_passes_as_it_comes(
        server_factory: Callable[..., ServerProcess],
        nginx_factory: Callable[..., tuple[Nginx, str]]) -> None:
    # The offline provider answers in one burst: the agent is built with it, then invoked on
    # a second server (same data) whose model streams 40 pieces over about 2 s.
    offline = server_factory(OFFLINE_STAGE_DELAY_SECONDS="0.01")
    async with httpx.AsyncClient(base_url=offline.base_url, timeout=10) as client:
        agent = await Api(client).built_agent()
    offline.stop()
    text = " ".join(f"word{n}" for n in range(40))
    with ScriptedOpenAI(default=Answer(text, chunk_chars=6, chunk_delay=0.05)) as model:
        server = server_factory(MODEL_PROVIDER="openai", OPENAI_BASE_URL=model.url,
                                MODEL_NAME="scripted-model")
        # One request at a time per address, so the stream's own connection fills the limit.
        _, url = nginx_factory(server, limit_conn="nexus_ai_per_client 1")
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            started = time.monotonic()
            arrivals: list[tuple[float, str]] = []
            async with client.stream("POST", f"/api/v1/agents/{agent['agent_id']}/invoke",
                                     json={"input_text": "Tell me a story", "stream": True}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        arrivals.append((time.monotonic() - started, line.removeprefix("event: ")))
                        if len(arrivals) == 1:
                            # While the stream runs, a second request from the same address.
                            refused = await client.get("/health")
            ended = time.monotonic() - started
            after = await client.get("/health")
    events = [event for _, event in arrivals]
    assert events[-1] == "done" and events.count("delta") > 10, events
    first_delta = next(at for at, event in arrivals if event == "delta")
    # The first piece arrived while the model was still writing, not with the end.
    assert ended - first_delta > 1.0, (first_delta, ended)
    assert refused.status_code == 429 and after.status_code == 200


def test_half_sent_headers_are_cut_off_by_nginx_while_the_service_answers(
        server_factory: Callable[..., ServerProcess],
        nginx_factory: Callable[..., tuple[Nginx, str]]) -> None:
    timeout = 1
    server = server_factory()
    nginx, url = nginx_factory(server, client_header_timeout=f"{timeout}s")
    port = int(url.rsplit(":", 1)[1])
    with connect(port) as through_nginx, connect(server.port) as direct:
        through_nginx.sendall(HALF_HEADERS)
        direct.sendall(HALF_HEADERS)
        sent = time.monotonic()
        # Meanwhile the service answers, through nginx and directly.
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200
        # nginx closes the connection without an answer once the timeout has passed...
        assert read_to_close(through_nginx, timeout + 4) == b""
        cut_after = time.monotonic() - sent
        assert timeout - 0.2 < cut_after < timeout + 2, cut_after
        # ...while uvicorn alone still holds its copy three timeouts later.
        assert is_open(direct, max(0.1, 3 * timeout - (time.monotonic() - sent)))
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    assert "client timed out (110: Connection timed out) while reading client request headers" \
        in nginx.error_log.read_text()
