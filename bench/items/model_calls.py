"""Items 9 and 10: what the platform adds to a real model call.

Both run the real model server (llama-server with SmolLM2-135M-Instruct, started by
scripts/model-server.sh on a free loopback port) and the full app (`nexus-ai serve`) with
MODEL_PROVIDER=openai at temperature 0 and a 32-token cap, so that every call does the same
work. The agent is seeded into the store (bench.seed), not built: a real build would take
minutes and measure nothing these items are about.

9: N JSON invocations with a timing proxy (bench.items.timing_proxy) between the platform and
   the model server: the client's time of each minus the proxy's time of its one model call.
10: time to the first text of a stream, through the platform (`event: delta`) and straight
   from the model server with the openai SDK (first content delta), the same messages,
   alternated.
"""

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from bench.context import Context
from bench.items.timing_proxy import ProxiedCall, TimingProxy
from bench.results import Row, Side, Target
from bench.seed import seed
from bench.servers import Server

INPUT = "Summarize what you can do for me"
MAX_OUTPUT_TOKENS = 32
# Untimed calls per side first: connections opened, the model's prompt cache filled.
WARMUP_CALLS = 2
CALL_TIMEOUT_SECONDS = 120.0
INVOKE_ROUTE = "POST /api/v1/agents/{agent_id}/invoke"


@dataclass(frozen=True)
class Platform:
    server: Server
    agent_id: str
    system_prompt: str


def _platform(ctx: Context, name: str, *, model_url: str, shown_url: str, model: str) -> Platform:
    """The full app on a store seeded with one running agent, its model at `model_url`
    (`shown_url` in the report: the port's name, not its number)."""
    path = ctx.workdir(name) / "data" / "nexus-ai.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    seed(path, projects=1, builds_per_project=1, invocations=0, agents=1)
    server = ctx.server("full", name, settings={
        "MODEL_PROVIDER": "openai", "OPENAI_BASE_URL": model_url, "MODEL_NAME": model,
        "MODEL_TEMPERATURE": "0", "MODEL_MAX_OUTPUT_TOKENS": str(MAX_OUTPUT_TOKENS),
        # A failed attempt must show as a failure, not as a slow call.
        "MODEL_MAX_RETRIES": "0"})
    assert ctx.item is not None
    ctx.item.commands[-1] = ctx.item.commands[-1].replace(model_url, shown_url)
    response = httpx.get(f"{server.base_url}/api/v1/agents", timeout=30)
    response.raise_for_status()
    [agent] = response.json()["data"]["items"]
    return Platform(server=server, agent_id=agent["agent_id"], system_prompt=agent["system_prompt"])


def _invoke(client: httpx.Client, agent_id: str) -> tuple[float, dict[str, Any]]:
    """One JSON invocation: the client's ms and the invocation record."""
    started = time.perf_counter()
    response = client.post(f"/api/v1/agents/{agent_id}/invoke", json={"input_text": INPUT})
    elapsed = 1000 * (time.perf_counter() - started)
    response.raise_for_status()
    invocation = response.json()["data"]
    if invocation["status"] != "success":
        raise RuntimeError(f"invocation {invocation['status']}: {invocation['error']}")
    return elapsed, invocation


def _percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def added_latency(ctx: Context) -> list[Row]:
    """Item 9: per JSON invocation, the client's time minus the model server's time for the
    same (internally streamed) call as the timing proxy saw it."""
    model = ctx.model_server("model")
    calls = ctx.profile.model_calls
    with TimingProxy(model.base_url.removesuffix("/v1")) as proxy:
        assert ctx.item is not None
        ctx.item.command("# the timing proxy (bench/items/timing_proxy.py, in the benchmark's process) "
                         "on 127.0.0.1:$PROXY_PORT relays to http://127.0.0.1:$MODEL_PORT")
        platform = _platform(ctx, "platform", model_url=f"{proxy.base_url}/v1",
                             shown_url="http://127.0.0.1:$PROXY_PORT/v1", model=model.model)
        client_ms: list[float] = []
        proxied: list[ProxiedCall] = []
        recorded_ms: list[float] = []
        before: list[float] = []  # the client's send to the proxy having the request
        after: list[float] = []  # the proxy's last byte to the client having the answer
        cpu_ms: list[float] = []  # the platform process's CPU time per invocation
        with httpx.Client(base_url=platform.server.base_url, timeout=CALL_TIMEOUT_SECONDS) as client:
            for index in range(WARMUP_CALLS + calls):
                cpu_before = platform.server.cpu_seconds()
                started = time.perf_counter()
                elapsed, invocation = _invoke(client, platform.agent_id)
                call = proxy.calls.get(timeout=CALL_TIMEOUT_SECONDS)
                cpu = 1000 * (platform.server.cpu_seconds() - cpu_before)
                if not proxy.calls.empty() or call.status != 200:
                    raise RuntimeError(f"expected one successful model call per invocation: {call}")
                if index < WARMUP_CALLS:
                    continue
                client_ms.append(elapsed)
                proxied.append(call)
                recorded_ms.append(invocation["duration_ms"])
                cpu_ms.append(cpu)
                before.append(1000 * (call.started - started))
                after.append(elapsed - 1000 * (call.ended - started))
    added = [total - call.ms for total, call in zip(client_ms, proxied)]
    p50, p95 = statistics.median(added), _percentile(added, 0.95)
    ctx.log(f"added per call: p50 {p50:.2f} ms, p95 {p95:.2f} ms over {calls} calls")

    name = f"{INVOKE_ROUTE} (JSON), {calls} calls"
    calls_row = Row(item=9, name=f"{name}: the whole call",
                    a=Side("client", "ms", client_ms),
                    b=Side("model server, at the proxy", "ms", [call.ms for call in proxied]),
                    ratios=[total / call.ms for total, call in zip(client_ms, proxied)])
    p50_row = Row(item=9, name=f"{name}: added by the platform (client − model server), p50",
                  a=Side("added", "ms p50", added), ratios=[p50], target=Target("<=", 5.0))
    p95_row = Row(item=9, name=f"{name}: added by the platform, p95",
                  a=Side("added", "ms p95", [p95]))
    server_ms = [call.server_ms for call in proxied if call.server_ms is not None]
    calls_row.notes.append(
        f"median of the calls: the platform's own record says {statistics.median(recorded_ms):.1f} ms "
        "(invocation duration_ms)" + (
            f"; llama-server's timings (prompt_ms + predicted_ms) {statistics.median(server_ms):.1f} ms "
            f"of the proxy's {statistics.median(call.ms for call in proxied):.1f} ms" if server_ms else ""))
    p50_row.notes.append(
        f"where the added time goes (medians): {statistics.median(before):.2f} ms from the client's "
        f"request to the model request reaching the proxy, {statistics.median(after):.2f} ms from the "
        "model's last byte to the client having the answer; min "
        f"{min(added):.2f} ms, max {max(added):.2f} ms; the platform's CPU time per invocation "
        f"{statistics.median(cpu_ms):.1f} ms (all of it: while the model streams too)")
    p50_row.notes.append(
        "the ratio column of this row is the p50 in ms (the target is absolute: ≤ 5 ms); the proxy's "
        "own request parsing is counted as the platform's, so the figure is an upper bound")
    return [calls_row, p50_row, p95_row]


@dataclass(frozen=True)
class Streamed:
    ttft_ms: float
    total_ms: float
    text: str
    recorded_ttft_ms: float | None = None


def _through_platform(client: httpx.Client, agent_id: str) -> Streamed:
    """`Accept: text/event-stream`: time to the first `event: delta` frame, read to the end."""
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    event = ""
    done: dict[str, Any] | None = None
    with client.stream("POST", f"/api/v1/agents/{agent_id}/invoke", json={"input_text": INPUT},
                       headers={"Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
                if event == "delta" and first is None:
                    first = time.perf_counter()
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                if event == "delta":
                    parts.append(data["text"])
                elif event == "done":
                    done = data
                elif event == "error":
                    raise RuntimeError(f"the platform's stream failed: {data}")
    ended = time.perf_counter()
    if first is None or done is None or done["status"] != "success":
        raise RuntimeError(f"the platform's stream had no text or no successful end: {done}")
    return Streamed(ttft_ms=1000 * (first - started), total_ms=1000 * (ended - started),
                    text="".join(parts), recorded_ttft_ms=done["time_to_first_token_ms"])


def _direct(client: openai.OpenAI, model: str, messages: list[dict[str, str]]) -> Streamed:
    """The same request the platform makes, with the openai SDK: time to the first content
    delta, read to the end."""
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_OUTPUT_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True})
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.perf_counter()
                parts.append(chunk.choices[0].delta.content)
    ended = time.perf_counter()
    if first is None:
        raise RuntimeError("the model server's stream had no text")
    return Streamed(ttft_ms=1000 * (first - started), total_ms=1000 * (ended - started),
                    text="".join(parts))


def streamed_ttft(ctx: Context) -> list[Row]:
    """Item 10: time to first token through the platform vs straight from the model server,
    alternated, the same messages (the agent's system prompt and the input)."""
    model = ctx.model_server("model")
    platform = _platform(ctx, "platform", model_url=model.base_url,
                         shown_url="http://127.0.0.1:$MODEL_PORT/v1", model=model.model)
    messages = [{"role": "system", "content": platform.system_prompt}, {"role": "user", "content": INPUT}]
    pairs = ctx.profile.ttft_pairs
    platform_side, direct_side = Side("through the platform", "ms TTFT"), Side("model server direct", "ms TTFT")
    row = Row(item=10, name=f"streamed {INVOKE_ROUTE} vs the model server's own stream: time to "
                            f"first token, {pairs} pairs",
              a=platform_side, b=direct_side, target=Target("<=", 1.1))
    results: list[tuple[Streamed, Streamed]] = []
    direct = openai.OpenAI(base_url=model.base_url, api_key="not-needed", max_retries=0,
                           timeout=CALL_TIMEOUT_SECONDS)
    with direct, httpx.Client(base_url=platform.server.base_url, timeout=CALL_TIMEOUT_SECONDS) as client:
        for _ in range(WARMUP_CALLS):
            _through_platform(client, platform.agent_id)
            _direct(direct, model.model, messages)
        for _ in range(pairs):
            ours = _through_platform(client, platform.agent_id)
            theirs = _direct(direct, model.model, messages)
            results.append((ours, theirs))
            platform_side.values.append(ours.ttft_ms)
            direct_side.values.append(theirs.ttft_ms)
            row.ratios.append(ours.ttft_ms / theirs.ttft_ms)
    ctx.log(f"TTFT: platform {platform_side.median:.1f} ms vs direct {direct_side.median:.1f} ms, "
            f"ratio {row.ratio:.3f}")
    recorded = [ours.recorded_ttft_ms for ours, _ in results if ours.recorded_ttft_ms is not None]
    row.notes.append(f"ratio of the medians {platform_side.median / direct_side.median:.3f}; "
                     f"difference of the medians {platform_side.median - direct_side.median:.2f} ms")
    row.notes.append(
        "whole stream (medians): through the platform "
        f"{statistics.median(ours.total_ms for ours, _ in results):.1f} ms, direct "
        f"{statistics.median(theirs.total_ms for _, theirs in results):.1f} ms"
        + (f"; the platform's own record of its model call's TTFT {statistics.median(recorded):.1f} ms"
           if recorded else ""))
    same = sum(ours.text == theirs.text for ours, theirs in results)
    row.notes.append(f"messages: the agent's system prompt ({len(platform.system_prompt)} characters) "
                     f"and {INPUT!r}; the same answer on both sides in {same} of {pairs} pairs")
    return [row]
