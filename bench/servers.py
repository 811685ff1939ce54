"""Servers under test: uvicorn subprocesses on free loopback ports, each with its own data and
log directories under the run's temporary directory."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from api.config import Settings

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 120.0

# Inherited settings (a developer's WORKERS, API_PORT, STORAGE_BACKEND, ...) would change what
# is measured: a server under test gets only the settings its item gives it.
_SETTING_VARIABLES = {name.upper() for name in Settings.model_fields} | {"PROMETHEUS_MULTIPROC_DIR"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def base_environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key.upper() not in _SETTING_VARIABLES}
    # Loopback only: botocore's credential chain must never ask the EC2 metadata address.
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Server:
    """One server process (with `workers` > 1, uvicorn's supervisor and its workers).

    `variant` is "full" (the operator's `nexus-ai serve`), "worker" (`nexus-ai worker`) or an app of bench.apps or
    bench.rivals served by `python -m bench.serve`, with its `serve_options` (`--loop`, `--http`).
    """

    def __init__(self, variant: str, workdir: Path, *, workers: int = 1,
                 settings: dict[str, str] | None = None, serve_options: tuple[str, ...] = ()) -> None:
        self.variant = variant
        self.workdir = workdir
        self.workers = workers
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.settings = {
            "DATA_DIR": str(workdir / "data"),
            "LOG_DIR": str(workdir / "logs"),
            "ENVIRONMENT": "production",
            # Production's default is API keys; the items measure the service without them
            # (on loopback, which AUTH_MODE=none requires) unless they say otherwise.
            "AUTH_MODE": "none",
            # Builds made while setting an item up finish at once; items that measure builds
            # or the mixed scenario say otherwise.
            "OFFLINE_STAGE_DELAY_SECONDS": "0",
            **(settings or {}),
        }
        if variant == "full":
            self.argv = [PYTHON, "-m", "api.cli", "serve", "--host", HOST, "--port", str(self.port),
                         "--workers", str(workers)]
        elif variant == "worker":
            self.argv = [PYTHON, "-m", "api.cli", "worker", "--host", HOST, "--port", str(self.port)]
        else:
            self.argv = [PYTHON, "-m", "bench.serve", variant, "--port", str(self.port),
                         "--workers", str(workers), *serve_options]
        self.process: subprocess.Popen[bytes] | None = None
        # With AUTH_MODE=api_key, a builder key's header, made at start.
        self.headers: dict[str, str] = {}

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.out"

    @property
    def authenticates(self) -> bool:
        return self.settings["AUTH_MODE"] == "api_key"

    def command(self, bench_dir: Path) -> str:
        """The command line as the report shows it: settings first, paths relative to the run."""
        def show(value: str) -> str:
            return value.replace(str(bench_dir), "$BENCH_DIR").replace(PYTHON, ".venv/bin/python")

        settings = " ".join(f"{key}={shlex.quote(show(value))}"
                            for key, value in self.settings.items())
        argv = " ".join(shlex.quote(show(part)) for part in self.argv)
        serve = f"AWS_EC2_METADATA_DISABLED=true {settings} {argv}".replace(str(self.port), "$PORT")
        if not self.authenticates:
            return serve
        return (f"NEXUS_API_KEY=$({settings} {show(PYTHON)} -m api.cli keys create --tenant bench "
                f"--role builder) && {serve}")

    def start(self) -> "Server":
        if self.authenticates:
            created = subprocess.run(
                [PYTHON, "-m", "api.cli", "keys", "create", "--tenant", "bench", "--role", "builder"],
                cwd=self.workdir, env={**base_environment(), **self.settings}, capture_output=True,
                text=True, check=True, timeout=60)
            self.headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=self.workdir, env={**base_environment(), **self.settings},
                stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.variant} server exited at start-up:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"{self.variant} server did not answer within {START_TIMEOUT_SECONDS:g} s")
        self._wait_for_workers(deadline)
        return self

    def _wait_for_workers(self, deadline: float) -> None:
        # With several workers the first to be ready answers the probe; the others may still
        # be importing the app.
        if self.workers == 1:
            return
        while time.monotonic() < deadline:
            if len(self.worker_processes()) >= self.workers:
                time.sleep(2.0)
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.variant}: {self.workers} workers did not start")

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that serve requests: the server itself, or its workers."""
        assert self.process is not None
        parent = psutil.Process(self.process.pid)
        if self.workers == 1:
            return [parent]
        # uvicorn's supervisor also runs a multiprocessing resource tracker: workers are the
        # children that run the app, i.e. every child but that one.
        return [child for child in parent.children()
                if "resource_tracker" not in " ".join(child.cmdline())]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the serving processes (all their threads) so far."""
        return sum(sum(process.cpu_times()[:2]) for process in self.worker_processes())

    def rss_bytes(self) -> int:
        return sum(process.memory_info().rss for process in self.worker_processes())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class ModelServer:
    """The real model server (llama-server with SmolLM2-135M-Instruct, docs/MODELS.md), started
    as tests/model's fixture starts it: `scripts/model-server.sh run PORT`, so that the install
    directory, the model file and the server's flags are written down once, in that script."""

    SCRIPT = REPO / "scripts" / "model-server.sh"
    NOT_INSTALLED = 3  # the script's exit status when nothing is installed

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self.argv = [str(self.SCRIPT), "run", str(self.port)]
        self.model = ""  # the id /v1/models reports, once started
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.workdir / "llama-server.log"

    def command(self) -> str:
        # $MODEL_PORT: the platform's OPENAI_BASE_URL names it too.
        return "scripts/model-server.sh run $MODEL_PORT"

    def start(self) -> "ModelServer":
        # A file, not a pipe: a pipe nobody reads would fill and stall the server.
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.log_path.read_text(errors="replace")[-3000:].strip()
                if self.process.returncode == self.NOT_INSTALLED:
                    raise RuntimeError(output)  # the script's own words: how to install it
                raise RuntimeError(f"llama-server exited with status {self.process.returncode}: {output}")
            try:
                if httpx.get(f"http://{HOST}:{self.port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"llama-server did not answer within {START_TIMEOUT_SECONDS:g} s")
        models = httpx.get(f"{self.base_url}/models", timeout=5)
        models.raise_for_status()
        self.model = models.json()["data"][0]["id"]
        return self

    def stop(self) -> None:
        # The script execs llama-server: the process is the server itself.
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
