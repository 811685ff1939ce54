"""`python -m bench.serve VARIANT --port N [--workers N]`: an app of bench.apps, served the way
`nexus-ai serve` serves the full app (which the bench starts with `nexus-ai serve` itself): same
uvicorn options and socket, no uvicorn access log.
"""

import argparse

from api.cli import run_server
from bench.apps import VARIANTS
from bench.servers import HOST


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run_server(f"bench.apps:{args.variant}", factory=True, host=HOST, port=args.port,
               workers=args.workers, timeout_graceful_shutdown=30, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
