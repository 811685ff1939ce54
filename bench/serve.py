"""`python -m bench.serve VARIANT --port N [--workers N]`: the apps of bench.apps, or the full
app (`full`), served the way `nexus-ai serve` serves it: same uvicorn options and socket, no
uvicorn access log.
"""

import argparse

from api.cli import run_server
from api.config import get_settings
from api.observability.setup import prepare_server
from bench.apps import VARIANTS
from bench.servers import HOST


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=["full", *sorted(VARIANTS)])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    options = {"host": HOST, "port": args.port, "workers": args.workers, "timeout_graceful_shutdown": 30}
    if args.variant == "full":
        run_server("api.main:app", **options, **prepare_server(get_settings()))
    else:
        run_server(f"bench.apps:{args.variant}", factory=True, log_config=None, access_log=False,
                   **options)


if __name__ == "__main__":
    main()
