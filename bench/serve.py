"""`python -m bench.serve VARIANT --port N [--workers N] [--tcp]`: the apps of bench.apps, or
the full app (`full`), served the way `nexus-ai serve` serves it: same uvicorn options, no
uvicorn access log.

`--tcp` (with several workers) declares the workers' shared listening socket as TCP, the
change this suite recommends for `api/cli.py`: uvicorn binds it with proto 0, so asyncio never
sets TCP_NODELAY on accepted connections and every keep-alive response waits for the client's
delayed ACK, about 40 ms on Linux (Kludex/uvicorn#3149).
"""

import argparse
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from api.config import get_settings
from api.observability.setup import prepare_server
from bench.apps import VARIANTS
from bench.servers import HOST


def _serve(config: uvicorn.Config, *, declare_tcp: bool) -> None:
    if config.workers == 1:
        uvicorn.Server(config).run()
        return
    sock = config.bind_socket()
    if declare_tcp:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    Multiprocess(config, sockets=[sock]).run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=["full", *sorted(VARIANTS)])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tcp", action="store_true", help="declare the shared socket as TCP")
    args = parser.parse_args()
    if args.variant == "full":
        options = prepare_server(get_settings())
        config = uvicorn.Config("api.main:app", host=HOST, port=args.port, workers=args.workers,
                                timeout_graceful_shutdown=30, **options)
    else:
        config = uvicorn.Config(f"bench.apps:{args.variant}", factory=True, host=HOST,
                                port=args.port, workers=args.workers,
                                timeout_graceful_shutdown=30, log_config=None, access_log=False)
    _serve(config, declare_tcp=args.tcp)


if __name__ == "__main__":
    main()
