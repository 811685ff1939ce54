"""The results as Markdown, written into docs/PERFORMANCE.md between two markers so that the
rest of the file (the analysis, other engineers' sections) is left as it is."""

from pathlib import Path

from bench.results import ItemResult, Row

BEGIN = "<!-- bench:results:begin (written by `python -m bench`; edits inside are overwritten) -->"
END = "<!-- bench:results:end -->"


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _side(row: Row, which: str) -> str:
    side = row.a if which == "a" else row.b
    if side is None:
        return ""
    return f"{side.label}: **{_number(side.median)}** {side.unit}"


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return ""
    if len(row.ratios) == 1:
        return f"**{row.ratio:.3f}**"
    return f"**{row.ratio:.3f}** ({min(row.ratios):.3f}–{max(row.ratios):.3f})"


def _verdict(row: Row) -> str:
    return {None: "reported", True: "met", False: "**missed**"}[row.met]


def summary_table(items: list[ItemResult]) -> list[str]:
    lines = ["| # | measurement | A (median) | B (median) | A/B: median (min–max) | target | |",
             "|---|---|---|---|---|---|---|"]
    for item in items:
        if item.error:
            lines.append(f"| {item.number} | {item.title} | — | — | — | — | **failed**: {item.error} |")
        for row in item.rows:
            lines.append(f"| {item.number} | {row.name} | {_side(row, 'a')} | {_side(row, 'b')} | "
                         f"{_ratio(row)} | {row.target or ''} | {_verdict(row)} |")
    return lines


def _details(item: ItemResult) -> list[str]:
    lines = [f"#### {item.number}. {item.title} ({item.seconds:.0f} s)", ""]
    for row in item.rows:
        lines.append(f"- **{row.name}**")
        for side in filter(None, (row.a, row.b)):
            lines.append(f"  - {side.label} ({side.unit}): " + ", ".join(_number(v) for v in side.values))
        if len(row.ratios) > 1:
            lines.append("  - A/B by pair: " + ", ".join(f"{r:.3f}" for r in row.ratios))
        lines.extend(f"  - {note}" for note in row.notes)
    lines.extend(f"- {note}" for note in item.notes)
    if item.error:
        lines.append(f"- failed: {item.error}")
    if item.commands:
        lines += ["", "```sh", *item.commands, "```"]
    return lines + [""]


def render(items: list[ItemResult], *, machine: dict[str, str], invocation: str,
           quick: bool, extra: list[str]) -> str:
    lines = [BEGIN, "## Results", ""]
    if quick:
        lines += ["> Quick mode: a few seconds per item, small stores. These figures check that "
                  "the harness works; they are not the published results.", ""]
    lines += [f"Measured with `{invocation}` on {machine['date']}. A is measured first in each "
              "pair, B right after it; the ratio is the median of the per-pair ratios A/B.", "",
              "| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine.items()]
    lines += ["", *summary_table(items), ""]
    lines += ["### Per item: every run, notes and the exact commands", "",
              "`$BENCH_DIR` is the run's temporary directory, `$PORT` a free loopback port chosen "
              "per server. Each server runs in its own directory under `$BENCH_DIR` with "
              "`PYTHONPATH` set to the repository root; wrk and locust run from the repository "
              "root.", ""]
    for item in items:
        lines += _details(item)
    lines += [f"Also in `bench/`: {line}" for line in extra]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write(path: Path, block: str) -> None:
    """Replace the results block of `path`, or add it: before a `## DynamoDB` section if the
    file has one (that section belongs to the DynamoDB benchmark), else at the end."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Performance\n\n" + block)
        return
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block.rstrip("\n") + tail
    elif "\n## DynamoDB" in text:
        head, tail = text.split("\n## DynamoDB", 1)
        text = head.rstrip("\n") + "\n\n" + block + "\n## DynamoDB" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
