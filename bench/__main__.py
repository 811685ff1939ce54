"""python -m bench [--quick] [--only 1,4] [--output PATH] [--json PATH] [--list]

Runs the items of issue 6 against servers it starts on loopback, prints the results table,
and (a full run of every item, or with --output) writes it into docs/PERFORMANCE.md.
Exit status 1 when an item failed to produce sane numbers; a missed target is reported, not
an error.
"""

import argparse
import ast
import dataclasses
import json
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import report, wrk
from bench.context import FULL, QUICK, Context
from bench.items import ITEMS
from bench.machine import describe
from bench.results import ItemResult
from bench.servers import REPO

DEFAULT_OUTPUT = REPO / "docs" / "PERFORMANCE.md"
# Another engineer's benchmark of the DynamoDB backend, run on its own.
DYNAMODB_BENCH = REPO / "bench" / "dynamodb_requests.py"


def _items(text: str | None) -> list[int]:
    if not text:
        return sorted(ITEMS)
    numbers = [int(part) for part in text.split(",") if part.strip()]
    unknown = [n for n in numbers if n not in ITEMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"no item {unknown}; items are {sorted(ITEMS)}")
    return sorted(set(numbers))


def _other_benchmarks() -> list[str]:
    if not DYNAMODB_BENCH.exists():
        return []
    try:
        doc = ast.get_docstring(ast.parse(DYNAMODB_BENCH.read_text())) or ""
    except SyntaxError:
        doc = ""
    summary = doc.strip().splitlines()[0] if doc.strip() else "the DynamoDB backend"
    return [f"`dynamodb_requests.py` ({summary.rstrip('.')}): run on its "
            "own with `python -m bench.dynamodb_requests`; its results are the DynamoDB section."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds per item and small stores: checks the harness (CI)")
    parser.add_argument("--only", type=_items, metavar="N,M", help="run these items only")
    parser.add_argument("--pairs", type=int, help="A/B pairs per comparison (at least 3)")
    parser.add_argument("--output", type=Path,
                        help=f"write the results block into this Markdown file (default for a full "
                             f"run of every item: {DEFAULT_OUTPUT.relative_to(REPO)})")
    parser.add_argument("--no-write", action="store_true", help="print only, write no Markdown")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data and logs")
    parser.add_argument("--list", action="store_true", help="list the items and exit")
    args = parser.parse_args(argv)

    if args.list:
        for number, listed in sorted(ITEMS.items()):
            print(f"{number}. {listed.title}: {listed.what}")
        for line in _other_benchmarks():
            print(f"also: {line}")
        return 0
    if args.pairs is not None and args.pairs < 3:
        parser.error("--pairs must be at least 3")

    wrk_path = wrk.require()
    numbers = args.only or sorted(ITEMS)
    profile = QUICK if args.quick else FULL
    if args.pairs:
        profile = dataclasses.replace(profile, pairs=args.pairs)
    output = args.output
    if output is None and not args.no_write and not args.quick and not args.only:
        output = DEFAULT_OUTPUT
    invocation = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])

    bench_dir = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    ctx = Context(profile, bench_dir)
    machine = describe(wrk_path)
    ctx.log(f"{profile.name} run of items {numbers} in {bench_dir}")
    results: list[ItemResult] = []
    try:
        for number in numbers:
            item = ItemResult(number=number, title=ITEMS[number].title)
            ctx.item = item
            began = time.monotonic()
            try:
                item.rows = ITEMS[number].run(ctx)
            except Exception as exc:
                item.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                ctx.log("FAILED\n" + traceback.format_exc())
            finally:
                ctx.stop_servers()
                item.seconds = time.monotonic() - began
            for row in item.rows:
                if row.problems() and not item.error:
                    item.error = f"{row.name}: {'; '.join(row.problems())}"
            results.append(item)
            ctx.item = None
    finally:
        ctx.stop_servers()
        if args.keep:
            print(f"kept {bench_dir}", file=sys.stderr)
        else:
            shutil.rmtree(bench_dir, ignore_errors=True)

    block = report.render(results, machine=machine, invocation=invocation, quick=args.quick,
                          extra=_other_benchmarks())
    print("\n".join(report.summary_table(results)))
    if output is not None:
        report.write(output, block)
        print(f"results written to {output}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "profile": profile.name, "machine": machine, "invocation": invocation,
            "items": [{"number": item.number, "title": item.title, "error": item.error,
                       "seconds": item.seconds, "commands": item.commands,
                       "rows": [row.to_json() for row in item.rows]} for item in results],
        }, indent=2))
    return 1 if any(item.error for item in results) else 0


if __name__ == "__main__":
    sys.exit(main())
