"""`python -m bench.serve VARIANT --port N [--workers N] [--loop L --http H]`: an app of
bench.apps or bench.rivals, served the way `nexus-ai serve` serves the full app (which the bench
starts with `nexus-ai serve` itself): same uvicorn options and socket, no uvicorn access log.
`--loop` and `--http` pick uvicorn's event loop and HTTP parser, "auto" (uvloop and httptools,
installed with uvicorn[standard]) as `nexus-ai serve` does by default.
"""

import argparse

from api.cli import run_server
from bench import apps, rivals
from bench.servers import HOST

VARIANTS = {**apps.VARIANTS, **rivals.VARIANTS}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto")
    args = parser.parse_args()
    factory = VARIANTS[args.variant]
    run_server(f"{factory.__module__}:{factory.__name__}", factory=True, host=HOST,
               port=args.port, workers=args.workers, loop=args.loop, http=args.http,
               timeout_graceful_shutdown=30, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
