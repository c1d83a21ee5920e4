"""A private PgBouncer (Debian's ``pgbouncer``) on a free port of 127.0.0.1, in front of a
PostgreSQL server, in transaction or session pooling mode, with the settings that
docs/operations.md recommends. Every database name is passed through to the server.

PgBouncer refuses to run as root, so when the tests run as root it switches to the
``postgres`` user (``-u``), like the private servers of :mod:`clusters`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
from clusters import free_port
from harness import wait_for

PROGRAM = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

_INI = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/userlist.txt
admin_users = postgres
pool_mode = {pool_mode}
max_client_conn = 500
default_pool_size = 40
server_reset_query = DISCARD ALL
server_reset_query_always = {reset_always}
logfile = {root}/pgbouncer.log
"""


def missing() -> str | None:
    """Why no PgBouncer can be started here, or None."""
    return (
        None
        if os.path.exists(PROGRAM)
        else "pgbouncer is not installed (apt-get install pgbouncer)"
    )


class PgBouncer:
    """One pgbouncer process; :meth:`url` gives the URL of a database through it."""

    def __init__(
        self,
        pool_mode: str,
        server_port: int = 5432,
        server_host: str = "127.0.0.1",
        reset_always: bool = False,
    ) -> None:
        """``reset_always``: DISCARD ALL after every transaction too, as some poolers are set
        up, so that a server connection keeps no prepared statement from one to the next."""
        self.pool_mode = pool_mode
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"tp-pgbouncer-{pool_mode}-"))
        (self.root / "userlist.txt").write_text('"postgres" ""\n', encoding="utf-8")
        (self.root / "pgbouncer.ini").write_text(
            _INI.format(
                host=server_host,
                port=server_port,
                listen_port=self.port,
                root=self.root,
                pool_mode=pool_mode,
                reset_always=int(reset_always),
            ),
            encoding="utf-8",
        )
        as_user: list[str] = []
        if os.geteuid() == 0:
            for path in (self.root, *self.root.iterdir()):
                shutil.chown(path, "postgres", "postgres")
            as_user = ["-u", "postgres"]
        self.process = subprocess.Popen(
            [PROGRAM, *as_user, str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._answers, timeout=30, message=f"pgbouncer on port {self.port}")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"pgbouncer exited: {self.log()}")
        try:
            psycopg2.connect(self.url("pgbouncer"), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def clients(self, database: str) -> int:
        """How many client connections PgBouncer holds for ``database`` (its SHOW CLIENTS)."""
        connection = psycopg2.connect(self.url("pgbouncer"))
        connection.autocommit = True  # the admin console knows no transactions
        try:
            with connection.cursor() as cursor:
                cursor.execute("SHOW CLIENTS")
                names = [column.name for column in cursor.description]
                return sum(
                    1
                    for row in cursor.fetchall()
                    if dict(zip(names, row, strict=True))["database"] == database
                )
        finally:
            connection.close()

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
