"""Start a throw-away PostgreSQL server for tests (or use ``QLP_TEST_PG_URL``).

Runs ``initdb`` + ``pg_ctl`` from the Debian ``postgresql`` package in a temporary
directory, listening on 127.0.0.1 and a free port. As root the server runs as the
``postgres`` user (PostgreSQL refuses to run as root). Every caller gets its own
fresh database, dropped at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

URL_ENV = "QLP_TEST_PG_URL"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started; the message says why."""


def _bin_dir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise PostgresUnavailable(
            "PostgreSQL binaries (initdb, pg_ctl) not found; install them with "
            "scripts/ci_postgres.sh (apt-get install -y postgresql) or set QLP_TEST_PG_URL"
        )
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server() -> Iterator[str]:
    """A running server's admin URL (``postgres`` database)."""
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    bindir = _bin_dir()
    prefix: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="qlp_pg_"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise PostgresUnavailable("running as root and no 'postgres' user exists") from exc
        os.chown(workdir, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = workdir / "data", _free_port()

    def run(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            log = (workdir / "server.log").read_text() if (workdir / "server.log").exists() else ""
            raise PostgresUnavailable(f"{args[0]} failed: {proc.stderr.strip()} {log[-500:]}")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E",
            "UTF8", "--no-sync")  # fmt: skip
        opts = f"-k {data} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=50"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
            str(workdir / "server.log"), "-w", "-t", "30", "start")  # fmt: skip
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """URL of a fresh database on a running (or freshly started) server."""
    import psycopg
    from sqlalchemy.engine import make_url

    with _server() as admin_url:
        admin = make_url(admin_url)
        dbname = f"qlp_test_{uuid.uuid4().hex[:10]}"
        conninfo = dict(
            host=admin.host, port=admin.port, user=admin.username, password=admin.password,
            dbname=admin.database or "postgres", autocommit=True,
        )  # fmt: skip
        try:
            with psycopg.connect(**conninfo) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
        except psycopg.Error as exc:
            raise PostgresUnavailable(f"cannot create a test database: {exc}") from exc
        try:
            yield admin.set(drivername="postgresql+psycopg", database=dbname).render_as_string(
                hide_password=False
            )
        finally:
            with psycopg.connect(**conninfo) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
