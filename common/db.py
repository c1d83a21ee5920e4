"""Database connections: which URL, with what timeouts and name, and clear errors when down.

Every process opens its own connections (a forked worker never touches its parent's). Each
connection carries an ``application_name`` that says which role opened it, so an operator can
tell the processes apart in ``pg_stat_activity``.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from common import redaction
from common.config import validate_database_url
from common.logs import one_line
from common.settings import processor_settings

Connection = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor

CONNECT_TIMEOUT_SECONDS = 5


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message names host and database, never a password."""


class DatabaseRefused(DatabaseUnavailable):
    """The server answered and refused this connection for a reason no retry can fix by
    itself (a refused password, a missing role or database, pg_hba.conf). At start it is a
    configuration error; during a run it is retried like an outage, since a failover can
    briefly refuse."""


def queue_database_url(
    explicit: str | None = None, fallback: str | None = None, data_dir: str | None = None
) -> str:
    """The URL of the queue's database: inside a processor, the processor's own (given as a
    flag or in a config file, maybe); else ``TASK_PROCESSOR_DATABASE_URL``, else
    ``DATABASE_URL``, else the embedded server in ``data_dir`` (``--data-dir``,
    ``TASK_PROCESSOR_DATA_DIR``).

    ``explicit``, ``fallback`` and ``data_dir`` are the same values when a command already
    parsed them.
    """
    processor = processor_settings()
    url = (
        explicit
        or (processor.database_url if processor else None)
        or os.environ.get("TASK_PROCESSOR_DATABASE_URL")
        or fallback
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        # Imported here, when it is needed: the embedded server's module brings subprocess,
        # psutil and hashlib, which a process given a database URL (every processor in
        # production) would otherwise carry (tests/unit/test_imports.py).
        from common import embedded_postgres

        return embedded_postgres.queue_url(data_dir)
    validate_database_url(url)
    return url


def describe(url: str) -> str:
    """``database 'x' on host:port``: how messages name a database, as libpq reads the URL
    (a ``host=`` parameter wins over the URL's host; PGHOST, PGPORT, PGDATABASE fill gaps)."""
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:
        params = {}
    hosts = (
        params.get("host")
        or params.get("hostaddr")
        or os.environ.get("PGHOST")
        or "the default host"
    ).split(",")
    ports = (params.get("port") or os.environ.get("PGPORT") or "5432").split(",")
    where = ",".join(
        f"{host}:{ports[min(index, len(ports) - 1)]}" for index, host in enumerate(hosts)
    )
    name = (
        params.get("dbname")
        or os.environ.get("PGDATABASE")
        or params.get("user")
        or os.environ.get("PGUSER")
        or "(default)"
    )
    return f"database {name!r} on {where}"


class _TimedCursor(psycopg2.extensions.cursor):
    """A cursor whose every statement carries its own ``SET LOCAL statement_timeout``.

    The timeout travels with each statement (one round trip: PostgreSQL runs a string of
    statements as one implicit transaction) instead of as a session setting or the ``options``
    startup parameter: both are lost or refused behind PgBouncer in transaction pooling, and
    a timeout must never depend on which server connection a pooler hands out.
    """

    timeout_ms = 0

    def execute(self, query: Any, vars: Any = None) -> None:
        if isinstance(query, sql.Composable):
            query = query.as_string(self)
        super().execute(f"SET LOCAL statement_timeout = {self.timeout_ms}; {query}", vars)


def _timed_cursor(timeout_ms: int) -> type[psycopg2.extensions.cursor]:
    return type("TimedCursor", (_TimedCursor,), {"timeout_ms": timeout_ms})


def connect(
    url: str,
    role: str,
    *,
    autocommit: bool = True,
    statement_timeout_ms: int | None = None,
    connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
) -> Connection:
    """Open a connection named ``task-processor <role>``; raise :class:`DatabaseUnavailable`.

    With ``statement_timeout_ms``, every statement of the connection's cursors is cancelled
    by the server after that long. TCP keepalives are short so that a connection to a
    vanished server fails in seconds instead of hanging a worker for the kernel's default two
    hours.
    """
    redaction.remember_database(url)
    try:
        connection = psycopg2.connect(
            url,
            application_name=f"task-processor {role}"[:63],
            connect_timeout=connect_timeout,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            tcp_user_timeout=10_000,  # unacknowledged data: give up after 10 s, not 15 min
            **_without_kerberos(url),
        )
    except psycopg2.OperationalError as error:
        raise _connect_error(url, one_line(error)) from None
    if statement_timeout_ms:
        connection.cursor_factory = _timed_cursor(statement_timeout_ms)
    connection.autocommit = autocommit
    return connection


# Where Kerberos finds its configuration and credentials (MIT krb5's defaults), and where
# libpq may be told a GSSAPI encryption mode: its variable, or a connection service, whose
# pg_service.conf entry a keyword given with the URL would override.
_KERBEROS_VARIABLES = (
    "KRB5_CONFIG",
    "KRB5CCNAME",
    "KRB5_CLIENT_KTNAME",
    "PGGSSENCMODE",
    "PGSERVICE",
)
_CHOSEN_BY_THE_URL = ("gssencmode", "service")
_KERBEROS_FILES = (
    "/etc/krb5.conf",
    "/tmp/krb5cc_{uid}",
    "/var/kerberos/krb5/user/{uid}/client.keytab",
)


@functools.cache
def _without_kerberos(url: str) -> dict[str, Any]:
    """``gssencmode=disable`` where GSSAPI encryption cannot happen anyway; decided once per
    URL in a process (a worker inherits its supervisor's decision instead of touching, in its
    own memory, what looking again would).

    libpq's default (``prefer``) starts Kerberos at every connection to look for credentials,
    which costs each process that connects about 0.2 MiB of memory and its share of the
    Kerberos libraries' pages (bench/memory.py: 1.1 MiB for a processor of five workers).
    Where Kerberos has no configuration, no credential cache and no client keytab at their
    default places, and neither the URL (by ``gssencmode`` or a ``service``) nor the
    environment chooses, ``prefer`` could only fall back: disabling it changes nothing but the
    cost.
    """
    if psycopg2.extensions.libpq_version() < 120000:
        return {}
    try:
        chosen = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:
        return {}  # not a URL libpq reads: the connection itself says what is wrong
    if any(keyword in chosen for keyword in _CHOSEN_BY_THE_URL):
        return {}
    if any(os.environ.get(name) for name in _KERBEROS_VARIABLES):
        return {}
    uid = os.geteuid()
    if any(os.path.exists(path.format(uid=uid)) for path in _KERBEROS_FILES):
        return {}
    return {"gssencmode": "disable"}


# What the server says when it refuses a connection for good, and what the operator can do.
# PostgreSQL sends these in English unless its lc_messages says otherwise; a refusal in
# another language is treated as an outage (retried).
_REFUSALS = (
    (
        re.compile("password authentication failed"),
        "fix the password in the database URL (or PGPASSWORD)",
    ),
    (
        re.compile("no password supplied"),
        "add the password to the database URL (or set PGPASSWORD)",
    ),
    (
        re.compile("authentication failed"),
        "check the user in the database URL and the server's pg_hba.conf",
    ),
    (
        re.compile('role ".*" does not exist'),
        "create the role (CREATE ROLE ... LOGIN) or fix the user in the database URL",
    ),
    (
        re.compile('database ".*" does not exist'),
        "create the database (createdb) or fix its name in the database URL",
    ),
    (
        re.compile("pg_hba.conf"),
        "allow this user, database and address in the server's pg_hba.conf",
    ),
    (re.compile("is not permitted to log in"), "let the role log in (ALTER ROLE ... LOGIN)"),
    (re.compile("permission denied for database"), "grant the role CONNECT on the database"),
)


def _connect_error(url: str, reason: str) -> DatabaseUnavailable:
    """The one-line error for a failed connect. The whole of it is scrubbed: the driver's
    text, and even a host as libpq read it, can quote parts of the URL."""
    refusal = reason.partition("FATAL: ")[2].strip()
    fix = next((fix for pattern, fix in _REFUSALS if refusal and pattern.search(refusal)), None)
    if fix is not None:
        return DatabaseRefused(
            redaction.scrub(
                f"{describe(url)} refused the connection: {refusal}. To fix: {fix} "
                f"(DATABASE_URL or TASK_PROCESSOR_DATABASE_URL)."
            )
        )
    return DatabaseUnavailable(
        redaction.scrub(
            f"cannot connect to {describe(url)}: {reason}. Check that PostgreSQL is running "
            f"and that DATABASE_URL / TASK_PROCESSOR_DATABASE_URL is right."
        )
    )


def is_connection_error(error: BaseException) -> bool:
    """True for errors that mean the connection is gone (reconnect), not that a query is bad."""
    return isinstance(
        error, (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseUnavailable)
    )


def close_quietly(connection: Connection | None) -> None:
    """Close a connection that may already be broken; a dead one has nothing to say."""
    if connection is not None:
        try:
            connection.close()
        except psycopg2.Error:
            pass


class Deadline:
    """Cuts ``connection`` if the work inside ``with Deadline(...)`` outlives ``seconds``.

    The server enforces statement timeouts only while it runs: a frozen server, or a proxy that
    stopped forwarding, leaves the client waiting in recv() for good while TCP stays up. Cutting
    the socket makes that wait fail at once with a connection error. ``fired`` says whether it
    did. The lock keeps a cut from reaching a file descriptor that was closed and reused.
    """

    def __init__(self, connection: Connection, seconds: float) -> None:
        self.connection = connection
        self.seconds = seconds
        self.fired = False
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        self._timer.join()  # no thread left behind: the supervisor forks right after

    def _cut(self) -> None:
        # Imported on this rare path: at the top, socket's enums would be in every process of
        # the processor (docs/architecture.md, "Processes").
        import socket

        with self._lock:
            if self._done or self.connection.closed:
                return
            try:
                cut = socket.socket(fileno=os.dup(self.connection.fileno()))
            except (OSError, psycopg2.Error):
                return
            try:
                cut.shutdown(socket.SHUT_RDWR)
                self.fired = True
            except OSError:
                pass
            finally:
                cut.close()
