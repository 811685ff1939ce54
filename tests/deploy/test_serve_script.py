"""`./scripts/serve.sh`, the README's way to start the service, leaves the pid file that
`deploy.sh status` and the operator's guide (`top -p $(cat api.pid)`) read."""

import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO, ServerProcess
from tests.deploy.conftest import DEPLOY


def test_serve_writes_the_pid_file_that_deploy_status_reads(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    pid_file = tmp_path / "api.pid"
    server = server_factory(command=[str(REPO / "scripts" / "serve.sh")], PID_FILE=str(pid_file))
    assert server.process is not None
    # exec keeps the script's pid: the file names the server process itself.
    assert int(pid_file.read_text()) == server.process.pid
    status = subprocess.run([str(DEPLOY), "status"], env={**server.env, "ENV_FILE": str(tmp_path / ".env")},
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"pid:     {server.process.pid}" in status.stdout
    assert "ready:   200" in status.stdout
