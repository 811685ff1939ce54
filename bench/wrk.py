"""Load from wrk (Debian's `wrk` package), run as a separate process."""

import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

INSTALL = "apt-get install -y wrk"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class WrkMissing(SystemExit):
    pass


def require() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing(f"bench: wrk is not installed; install it with `{INSTALL}` (Debian)")
    return path


@dataclass
class WrkResult:
    requests_per_second: float
    requests: int
    errors: int
    latency_ms: dict[str, float] = field(default_factory=dict)  # "p50", "p75", "p90", "p99"
    command: str = ""


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse(output: str, command: str = "") -> WrkResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise RuntimeError(f"unexpected wrk output for `{command}`:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    percentiles = re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+[a-z]+)\s*$", output, re.MULTILINE)
    latency = {f"p{percent}": _milliseconds(value) for percent, value in percentiles}
    return WrkResult(requests_per_second=float(rate.group(1)), requests=int(total.group(1)),
                     errors=errors, latency_ms=latency, command=command)


def argv(url: str, *, seconds: float, connections: int, threads: int = 1,
         headers: dict[str, str] | None = None) -> list[str]:
    sent = [part for name, value in (headers or {}).items() for part in ("-H", f"{name}: {value}")]
    return [require(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "--latency", *sent, url]


def run(url: str, *, seconds: float, connections: int, threads: int = 1,
        headers: dict[str, str] | None = None) -> WrkResult:
    command = argv(url, seconds=seconds, connections=connections, threads=threads, headers=headers)
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                            check=False)
    return parse(result.stdout, shlex.join(command))


class Background:
    """wrk running until stop(): for load during something whose length is not known ahead.
    wrk prints its statistics when interrupted."""

    LONGEST_SECONDS = 3600

    def __init__(self, url: str, *, connections: int, threads: int = 1) -> None:
        self.command = argv(url, seconds=self.LONGEST_SECONDS, connections=connections, threads=threads)
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)

    def stop(self) -> WrkResult:
        self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=30)
        return parse(output, shlex.join(self.command))
