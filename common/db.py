"""Database connections: which URL, with what timeouts and name, and clear errors when down.

Every process opens its own connections (a forked worker never touches its parent's). Each
connection carries an ``application_name`` that says which role opened it, so an operator can
tell the processes apart in ``pg_stat_activity``.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions

from common.config import ConfigError, validate_database_url

Connection = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor

CONNECT_TIMEOUT_SECONDS = 5


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message names host and database, never a password."""


def queue_database_url(explicit: str | None = None,
                       fallback: str | None = None) -> str:
    """The URL of the queue's database: ``TASK_PROCESSOR_DATABASE_URL``, else ``DATABASE_URL``.

    ``explicit`` and ``fallback`` are the same two values when a command already parsed them.
    """
    url = (explicit or os.environ.get("TASK_PROCESSOR_DATABASE_URL")
           or fallback or os.environ.get("DATABASE_URL"))
    if not url:
        raise ConfigError(
            "no database configured: set DATABASE_URL (or TASK_PROCESSOR_DATABASE_URL for a "
            "queue database of its own), e.g. postgresql://postgres@127.0.0.1:5432/postgres"
        )
    validate_database_url(url)
    return url


def redact(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) replaced by
    ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    query = [(key, "***" if key == "password" else value)
             for key, value in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def describe(url: str) -> str:
    """``database 'x' on host:port``: how error messages name a database."""
    parts = urlsplit(url)
    host = parts.hostname or "the default host"
    port = parts.port or 5432
    return f"database {parts.path.lstrip('/')!r} on {host}:{port}"


def connect(url: str, role: str, *, autocommit: bool = True,
            statement_timeout_ms: int | None = None,
            connect_timeout: int = CONNECT_TIMEOUT_SECONDS) -> Connection:
    """Open a connection named ``task-processor <role>``; raise :class:`DatabaseUnavailable`.

    TCP keepalives are short so that a connection to a vanished server fails in seconds
    instead of hanging a worker for the kernel's default two hours.
    """
    options = f"-c statement_timeout={statement_timeout_ms}" if statement_timeout_ms else None
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
            **({"options": options} if options else {}),
        )
    except psycopg2.OperationalError as error:
        reason = " ".join(str(error).split())
        raise DatabaseUnavailable(
            f"cannot connect to {describe(url)}: {reason}. Check that PostgreSQL is running "
            f"and that DATABASE_URL / TASK_PROCESSOR_DATABASE_URL is right."
        ) from None
    connection.autocommit = autocommit
    return connection


def is_connection_error(error: BaseException) -> bool:
    """True for errors that mean the connection is gone (reconnect), not that a query is bad."""
    return isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError,
                              DatabaseUnavailable))


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

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        self._timer.join()  # no thread left behind: the supervisor forks right after

    def _cut(self) -> None:
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
