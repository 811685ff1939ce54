"""What the figures were measured on: they mean nothing without it."""

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata

import psutil


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _wrk_version(wrk: str | None) -> str:
    if wrk is None:
        return "not installed"
    # `wrk -v` prints its version on the first line and exits 1.
    output = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
    return output.splitlines()[0].split(" [")[0].removeprefix("wrk ") if output else "unknown"


def describe(wrk: str | None) -> dict[str, str]:
    memory = psutil.virtual_memory().total
    load = os.getloadavg()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)",
        "memory": f"{memory / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version() + f" ({sys.implementation.name})",
        "uvicorn": _version("uvicorn"),
        "fastapi": _version("fastapi"),
        "starlette": _version("starlette"),
        "uvloop / httptools": f"{_version('uvloop')} / {_version('httptools')}",
        "wrk": _wrk_version(wrk),
        "locust": _version("locust"),
        "load average at start": " ".join(f"{value:.2f}" for value in load),
    }
