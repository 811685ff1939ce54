"""`nexus-ai`: serve the API, run builds, or prepare the database."""

import argparse
import asyncio
import os
import socket
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.supervisors import Multiprocess

from api.config import Settings, get_settings, is_loopback
from api.core.errors import NotFound
from api.core.principal import OPERATOR, ROLES
from api.core.store_errors import StoreError
from api.database.factory import BackendUnavailable, create_store
from api.instrumentation import configure_logging, prepare_server
from api.observability.audit import audited, command_line
from api.providers.factory import ProviderUnavailable, create_provider
from api.services.keys import KeyService, key_details


def _host(settings: Settings, host: str | None, default: str | None) -> str:
    """The address to listen on (`--host`, else the setting, which Settings resolves and has
    already checked); refused without keys unless it is a loopback one."""
    chosen = host or default
    assert chosen is not None
    if settings.auth_mode == "none" and not is_loopback(chosen):
        sys.exit(f"nexus-ai: AUTH_MODE=none serves everyone who can reach {chosen}: listen on "
                 "127.0.0.1, or set AUTH_MODE=api_key and create a key (nexus-ai keys create)")
    return chosen


def serve(host: str | None, port: int | None, workers: int | None) -> None:
    settings = get_settings()
    host = _host(settings, host, settings.api_host)
    # The app checks these at start-up too, but its log goes to files: say it on the terminal.
    try:
        create_provider(settings)
        create_store(settings)
    except (ProviderUnavailable, BackendUnavailable) as exc:
        sys.exit(f"nexus-ai: {exc}")
    options = {
        "host": host,
        "port": port or settings.api_port,
        "workers": workers or settings.workers,
        "timeout_graceful_shutdown": 30,
        **connection_options(settings),
        # JSON logging in this process too (with several workers it is uvicorn's supervisor,
        # which never imports the app) and an empty multiprocess metrics directory.
        **prepare_server(settings),
    }
    run_server("api.main:app", **options)


def work(host: str | None, port: int | None) -> None:
    """A build worker: one process running builds from the shared store, with its probes and
    /metrics on WORKER_HOST:WORKER_PORT."""
    settings = get_settings()
    host = _host(settings, host, settings.worker_host)
    # prometheus_client goes multiprocess whenever the variable is present, even empty.
    if {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"} & os.environ.keys():
        # Its metrics would be summed with (and its start would empty) the API's files.
        sys.exit("nexus-ai: a worker is one process and keeps its metrics in memory: "
                 "unset PROMETHEUS_MULTIPROC_DIR for it")
    try:
        create_provider(settings)
        create_store(settings)
    except (ProviderUnavailable, BackendUnavailable) as exc:
        sys.exit(f"nexus-ai: {exc}")
    uvicorn.run("api.main:create_worker_app", factory=True, host=host,
                port=port or settings.worker_port, timeout_graceful_shutdown=30,
                **connection_options(settings), **prepare_server(settings))


def connection_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's connection cap and keep-alive timeout, from the settings.

    uvicorn answers 503 once the open connections, the request's own included, reach
    limit_concurrency: one more than MAX_CONNECTIONS, so that MAX_CONNECTIONS are served."""
    cap = settings.max_connections
    return {"limit_concurrency": None if cap is None else cap + 1,
            "timeout_keep_alive": settings.keep_alive_timeout_seconds}


def run_server(app: str, **options: Any) -> None:
    """uvicorn.run, but with several workers their shared socket is declared TCP."""
    if options.get("workers", 1) == 1:
        uvicorn.run(app, **options)
        return
    # With several workers uvicorn binds the shared socket with proto 0, so asyncio never sets
    # TCP_NODELAY on the connections and Nagle delays every keep-alive response by ~40 ms
    # (uvicorn#3149): the same descriptor, declared TCP (docs/PERFORMANCE.md, F1).
    config = uvicorn.Config(app, **options)
    bound = config.bind_socket()
    sock = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    Multiprocess(config, sockets=[sock]).run()


async def _init_db() -> str:
    settings = get_settings()
    store = create_store(settings)
    await store.open()
    await store.close()
    return store.backend_name


async def _keys(args: argparse.Namespace) -> int:
    """`nexus-ai keys create | list | revoke`: on the configured store, as the service reads it."""
    settings = get_settings()
    # Keys made and revoked go to the service's audit.log; never to stdout, which has the token.
    try:
        configure_logging(settings.model_copy(update={"log_stdout": False}))
    except OSError as exc:
        sys.exit(f"nexus-ai: cannot write the audit log in LOG_DIR={settings.log_dir} ({exc}): run "
                 "as the service's user, with its settings")
    store = create_store(settings)
    await store.open()
    try:
        keys = KeyService(store=store, cache_seconds=0)
        if args.keys_command == "create":
            tenant = None if args.role == OPERATOR else args.tenant
            if args.role != OPERATOR and tenant is None:
                sys.exit("nexus-ai: keys create needs --tenant (only an operator key has none)")
            try:
                with audited("key.create", principal=command_line(), target_type="key") as act:
                    act.tenant_id = tenant
                    key, token = await keys.create(tenant_id=tenant, role=args.role, name=args.name,
                                                   expires_days=args.expires)
                    act.target_id, act.details = key.key_id, key_details(key)
            except ValueError as exc:
                sys.exit(f"nexus-ai: {exc}")
            print(token)
            print(f"Created key {key.key_id} (tenant {key.tenant_id or '-'}, role {key.role}"
                  f"{', expires ' + key.expires_at if key.expires_at else ''}). It is shown "
                  "this once: store it now.", file=sys.stderr)
        elif args.keys_command == "list":
            print("\t".join(("KEY_ID", "TENANT", "ROLE", "NAME", "CREATED", "EXPIRES", "REVOKED")))
            for key in await keys.list_keys(tenant_id=args.tenant):
                print("\t".join(value or "-" for value in (
                    key.key_id, key.tenant_id, key.role, key.name, key.created_at, key.expires_at,
                    key.revoked_at)))
        else:
            try:
                with audited("key.revoke", principal=command_line(), target_type="key",
                             target_id=args.key_id) as act:
                    revoked = await keys.revoke(key_id=args.key_id, tenant_id=None)
                    if revoked is None:
                        raise NotFound("key", args.key_id)
                    act.tenant_id, act.details = revoked.tenant_id, key_details(revoked)
            except NotFound:
                print(f"nexus-ai: no key {args.key_id}", file=sys.stderr)
                return 1
            print(f"Revoked key {revoked.key_id} at {revoked.revoked_at}; every server refuses "
                  f"it within AUTH_CACHE_SECONDS", file=sys.stderr)
        return 0
    finally:
        await store.close()


async def _migrate() -> tuple[str, int]:
    """The stored data converted to this release's layout, then opened as `init-db` does."""
    store = create_store(get_settings())
    converted = await store.migrate()
    return await _init_db(), converted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nexus-ai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the API server")
    serve_parser.add_argument("--host", help="default: API_HOST")
    serve_parser.add_argument("--port", type=int, help="default: API_PORT")
    serve_parser.add_argument("--workers", type=int, help="default: WORKERS")
    worker_parser = commands.add_parser("worker", help="run builds without serving the API "
                                        "(probes and /metrics on WORKER_HOST:WORKER_PORT)")
    worker_parser.add_argument("--host", help="default: WORKER_HOST")
    worker_parser.add_argument("--port", type=int, help="default: WORKER_PORT")
    keys_parser = commands.add_parser("keys", help="create, list or revoke API keys")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    create_parser = keys_commands.add_parser("create", help="make a key and print it, once")
    create_parser.add_argument("--tenant", help="the tenant the key acts for (not for operator)")
    create_parser.add_argument("--role", required=True, choices=ROLES)
    create_parser.add_argument("--name", help="a label: the user_id of what the key does")
    create_parser.add_argument("--expires", type=float, metavar="DAYS", help="default: never")
    list_parser = keys_commands.add_parser("list", help="every key (or a tenant's), never a secret")
    list_parser.add_argument("--tenant")
    revoke_parser = keys_commands.add_parser("revoke", help="stop a key from working")
    revoke_parser.add_argument("key_id")
    commands.add_parser("init-db", help="create or migrate the database, then exit")
    commands.add_parser("migrate", help="convert a DynamoDB table written by an earlier "
                        "release (every instance stopped), then exit as init-db does")
    args = parser.parse_args(argv)
    try:
        get_settings()
    except ValidationError as exc:
        sys.exit(f"nexus-ai: invalid settings (environment or .env):\n{exc}")
    if args.command == "serve":
        serve(args.host, args.port, args.workers)
        return
    if args.command == "worker":
        work(args.host, args.port)
        return
    if args.command == "keys":
        try:
            sys.exit(asyncio.run(_keys(args)))
        except StoreError as exc:
            sys.exit(f"nexus-ai: {exc}")
    try:
        if args.command == "migrate":
            backend, converted = asyncio.run(_migrate())
            print(f"Database ready ({backend}, {converted} items converted)", file=sys.stderr)
        else:
            backend = asyncio.run(_init_db())
            print(f"Database ready ({backend})", file=sys.stderr)
    except StoreError as exc:
        sys.exit(f"nexus-ai: {exc}")


if __name__ == "__main__":
    main()
