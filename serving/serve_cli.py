"""``ratchet serve`` and ``ratchet keys create``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from feedback.settings import DEV_MESSAGE_ID_SECRET
from ratchet.cli import CliError

logger = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from serving.app import build_app
    from serving.http_protocol import CoalescingHttpToolsProtocol
    from serving.settings import ServingSettings

    overrides: dict[str, Any] = {}
    if args.model is not None:
        overrides["model"] = args.model
    if args.backend is not None:
        overrides["backend"] = args.backend
    if args.url is not None:
        overrides["backend_url"] = args.url
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    if args.no_auth:
        overrides["auth"] = False
    if args.managed:
        overrides["managed"] = True
    try:
        settings = ServingSettings(**overrides)
    except ValidationError as exc:
        raise CliError(str(exc)) from exc
    if settings.managed and settings.backend != "vllm-server":
        raise CliError("--managed goes with --backend vllm-server (Ratchet runs the vLLM servers)")
    if settings.backend == "vllm-server" and not (settings.backend_url or settings.managed):
        raise CliError(
            "--backend vllm-server needs --url (the remote server's base URL) or --managed"
        )
    if settings.managed and settings.backend_url:
        raise CliError("--managed starts its own vLLM servers: drop --url")
    if (settings.backend != "vllm-server" or settings.managed) and not Path(
        settings.model
    ).is_dir():
        raise CliError(
            f"model directory {settings.model} not found; run `ratchet model bootstrap` "
            "or pass --model DIR"
        )
    if not settings.auth:
        logger.warning("--no-auth: the API accepts every caller as admin user 'dev' (demo only)")
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        if settings.message_id_secret == DEV_MESSAGE_ID_SECRET:
            raise CliError(
                f"listening on {settings.host} with the development RATCHET_MESSAGE_ID_SECRET: "
                "set a secret of your own (anyone could forge message ids with this one)"
            )
        logger.warning("listening on %s: reachable beyond this machine", settings.host)
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
        http=CoalescingHttpToolsProtocol,
    )
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    import psycopg

    from ratchet.db import connect
    from serving.auth import create_key
    from serving.settings import ServingSettings

    settings = ServingSettings()
    try:
        with connect(settings.database_url) as conn:
            key = create_key(conn, user_id=args.user, role=args.role)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    except psycopg.errors.UndefinedTable as exc:
        raise CliError("the api_keys table is missing: run `ratchet db migrate` first") from exc
    print(key)
    print(
        f"(API key for user {args.user!r}, role {args.role}; it is shown only once)",
        file=sys.stderr,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser("serve", help="run the OpenAI-compatible chat API")
    serve.add_argument(
        "--model", type=Path, help="model directory served while the registry is empty"
    )
    serve.add_argument("--backend", choices=["vllm", "vllm-server", "transformers"])
    serve.add_argument(
        "--url", help="base URL of a remote vLLM OpenAI server (--backend vllm-server)"
    )
    serve.add_argument(
        "--managed",
        action="store_true",
        help="with --backend vllm-server: start and stop the vLLM servers here (blue/green)",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--no-auth", action="store_true", help="accept every caller (demo only)")
    serve.set_defaults(func=_serve)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key and print it once")
    create.add_argument("--user", required=True, help="user name the key belongs to")
    create.add_argument("--role", default="user", choices=["user", "operator", "admin"])
    create.set_defaults(func=_keys_create)
