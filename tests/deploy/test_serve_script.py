"""`./scripts/serve.sh`, the README's way to start the service, leaves the pid file that
`deploy.sh status` and the operator's guide (`top -p $(cat api.pid)`) read."""

import signal
import subprocess
from pathlib import Path

import httpx

from tests.conftest import REPO, wait_until
from tests.deploy.conftest import Deployment


def test_serve_writes_the_pid_file_that_deploy_status_reads(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, "development")
    server = subprocess.Popen([str(REPO / "scripts" / "serve.sh")], env=deployment.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{deployment.base_url}/health/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=120, what="serve.sh to serve")
        # exec keeps the script's pid: the file names the server process itself.
        assert deployment.pid() == server.pid
        status = deployment.run("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"pid:     {server.pid}" in status.stdout
        assert "ready:   200" in status.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
