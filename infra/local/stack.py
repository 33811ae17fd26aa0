"""Bring the local stack up, down, or report on it: ``python -m infra.local.stack up|down|status``.

State lives under ``$RATCHET_HOME`` (default ``.ratchet/``): pidfiles in
``run/``, logs in ``logs/``, and ``stack.env`` with the resolved
``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS``, which every Ratchet
settings class reads. Every step is idempotent and health-checked.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from infra.local.postgres import PrivateCluster, StackError, answers
from infra.local.tansu import Broker, bootstrap_answers, port_open
from ratchet.db import ensure_database
from ratchet.env_file import read_env_file, write_env_file

logger = logging.getLogger("ratchet.stack")

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/ratchet"
PRIVATE_PG_PORT = 55432
TANSU_PORT = 19092


def home() -> Path:
    return Path(os.environ.get("RATCHET_HOME", ".ratchet")).resolve()


def _db_url_on(server_url: str, dbname: str = "ratchet") -> str:
    import psycopg

    return psycopg.conninfo.make_conninfo(server_url, dbname=dbname)


def up_postgres(root: Path) -> str:
    explicit = os.environ.get("DATABASE_URL")
    if explicit:
        if not answers(_db_url_on(explicit, "postgres")):
            raise StackError(f"DATABASE_URL is set but no Postgres answers there: {explicit}")
        ensure_database(explicit)
        return explicit
    if answers(_db_url_on(DEFAULT_DATABASE_URL, "postgres")):
        ensure_database(DEFAULT_DATABASE_URL)
        logger.info("postgres: using the server on 127.0.0.1:5432")
        return DEFAULT_DATABASE_URL
    cluster = PrivateCluster(root / "pg" / "data", PRIVATE_PG_PORT)
    cluster.start()
    url = cluster.url_for("ratchet")
    ensure_database(url)
    logger.info("postgres: private cluster on port %d (log %s)", PRIVATE_PG_PORT, cluster.log_file)
    return url


def up_kafka(root: Path) -> str:
    explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if explicit:
        if not bootstrap_answers(explicit):
            raise StackError(f"KAFKA_BOOTSTRAP_SERVERS is set but nothing answers: {explicit}")
        return explicit
    pidfile = root / "run" / "tansu.pid"
    if port_open("127.0.0.1", TANSU_PORT):
        return f"127.0.0.1:{TANSU_PORT}"
    broker = Broker(root / "bin", TANSU_PORT, root / "logs" / "tansu.log")
    pid = broker.start()
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(str(pid))
    logger.info(
        "kafka: tansu broker on 127.0.0.1:%d (in-memory; log %s)", TANSU_PORT, broker.log_file
    )
    return broker.bootstrap


def up() -> dict[str, str]:
    root = home()
    values = read_env_file(root / "stack.env")
    values["DATABASE_URL"] = up_postgres(root)
    values["KAFKA_BOOTSTRAP_SERVERS"] = up_kafka(root)
    write_env_file(root / "stack.env", values)
    return values


def _stop(pidfile: Path, name: str, timeout: float = 30.0) -> None:
    """SIGTERM the process in ``pidfile``, wait for it to exit (SIGKILL after ``timeout``)."""
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, ValueError):
        pidfile.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            logger.warning("%s: still running %.0f s after SIGTERM; killing it", name, timeout)
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    pidfile.unlink(missing_ok=True)
    logger.info("%s: stopped", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # our own child exits as a zombie until reaped
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def down() -> None:
    """Stop the API and consumer first (the API flushes its producer, the consumer
    finishes its batch, both while the broker and Postgres still answer), then
    tansu, then the private Postgres cluster; each is waited for."""
    root = home()
    for name in ("api", "consumer"):
        _stop(root / "run" / f"{name}.pid", name)
    _stop(root / "run" / "tansu.pid", "kafka (tansu)", timeout=10)
    cluster = PrivateCluster(root / "pg" / "data", PRIVATE_PG_PORT)
    if (cluster.data_dir / "PG_VERSION").exists():
        cluster.stop()
        logger.info("postgres: stopped the private cluster")


def status() -> int:
    root = home()
    values = read_env_file(root / "stack.env")
    db = values.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    kafka = values.get("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{TANSU_PORT}")
    ok_db, ok_kafka = answers(db), bootstrap_answers(kafka)
    print(f"postgres  {'up  ' if ok_db else 'DOWN'}  {db}")
    print(f"kafka     {'up  ' if ok_kafka else 'DOWN'}  {kafka}")
    for name in ("api", "consumer"):
        pf = root / "run" / f"{name}.pid"
        alive = False
        if pf.exists():
            try:
                os.kill(int(pf.read_text()), 0)
                alive = True
            except (ProcessLookupError, ValueError):
                alive = False
        print(f"{name:<9} {'up  ' if alive else 'down'}")
    return 0 if ok_db and ok_kafka else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack")
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.action == "up":
            values = up()
            print(f"stack up: DATABASE_URL={values['DATABASE_URL']}")
            print(f"          KAFKA_BOOTSTRAP_SERVERS={values['KAFKA_BOOTSTRAP_SERVERS']}")
            return 0
        if args.action == "down":
            down()
            return 0
        return status()
    except StackError as exc:
        print(f"stack {args.action} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
