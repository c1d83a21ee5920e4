"""Private PostgreSQL servers for the tests that need servers of their own: a primary and a
streaming standby for failover, a server behind PgBouncer. Each lives in a directory of the
test's and listens on a free port of 127.0.0.1; it is stopped (immediately) afterwards.

The server programs refuse to run as root, so when the tests run as root the servers run as
the ``postgres`` user."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg2

BINDIR = Path(
    subprocess.run(
        ["pg_config", "--bindir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    or "/usr/lib/postgresql/15/bin"
)


def server_programs_missing() -> str | None:
    """Why private servers cannot be made here, or None when they can."""
    for program in ("initdb", "pg_ctl", "pg_basebackup"):
        if not (BINDIR / program).exists():
            return f"{BINDIR / program} is missing (PostgreSQL's server programs)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run a server as"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], timeout: float = 60) -> None:
    result = subprocess.run(
        _as_server_user(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")


def _owned_directory(path: Path) -> Path:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    path.chmod(0o700)
    return path


class Cluster:
    """One PostgreSQL server: a data directory, a port, a log. Its directory is made under the
    system's temporary directory (the server's user must be able to reach it) and removed by
    :meth:`stop` with ``remove=True``."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.root = _owned_directory(Path(tempfile.mkdtemp(prefix=f"tp-{name}-")))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init_primary(
        self, settings: dict[str, str] | None = None, password: str | None = None
    ) -> Cluster:
        """A new primary; with ``password``, connections over TCP must give it (scram)."""
        authentication = ["-A", "trust"]
        if password is not None:
            password_file = self.root / "password"
            password_file.write_text(password)
            if os.geteuid() == 0:
                shutil.chown(password_file, "postgres", "postgres")
            authentication = [
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={password_file}",
            ]
        _run(
            [
                str(BINDIR / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                *authentication,
                "--no-sync",
            ]
        )
        lines = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "wal_keep_size": "'64MB'",
            **(settings or {}),
        }
        with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in lines.items())
        with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        return self

    def enable_tls(self) -> Cluster:
        """Serve TLS with a self-signed certificate (made by the openssl program) as well as
        plain connections; call after :meth:`init_primary`, before :meth:`start`."""
        _run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                str(self.data / "server.key"),
                "-out",
                str(self.data / "server.crt"),
            ]
        )
        with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write("ssl = on\n")
        return self

    def init_standby_of(self, primary: Cluster, settings: dict[str, str] | None = None) -> Cluster:
        """A streaming standby of ``primary`` (which must be running), on its own port, with
        ``settings`` over those it copied from the primary."""
        _run(
            [
                str(BINDIR / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(self.data),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ]
        )
        with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write(
                f"port = {self.port}\nunix_socket_directories = '{self.root}'\n"
                f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres "
                f"application_name=standby'\n"
            )
            conf.writelines(f"{key} = {value}\n" for key, value in (settings or {}).items())
        return self

    def start(self) -> Cluster:
        _run(
            [
                str(BINDIR / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        return self

    def stop(self, mode: str = "immediate", remove: bool = False) -> None:
        if (self.data / "postmaster.pid").exists():
            _run([str(BINDIR / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def promote(self) -> None:
        _run([str(BINDIR / "pg_ctl"), "-D", str(self.data), "-w", "promote"])

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        connection = psycopg2.connect(self.url, connect_timeout=5)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()
