"""A small pool of database connections for the API's request threads.

The threaded server starts one thread per request, so connections cannot belong to threads:
they are lent per unit of work and given back. A connection that fails is thrown away, and a
unit of work that failed on a reused (possibly stale) connection is tried once more on a fresh
one, so a database restart costs no failed request. The number of open connections is bounded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg2.extensions

from common import db

Cursor = psycopg2.extensions.cursor

T = TypeVar("T")


class ConnectionPool:
    """Connections named ``task-processor api``, each unit of work in one transaction."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 8,
        statement_timeout_ms: int = 5000,
        connect_timeout: int = 5,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout = connect_timeout
        self._idle: list[db.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._pid = os.getpid()

    def run(self, work: Callable[[Cursor], T]) -> T:
        """Run ``work(cursor)`` in a transaction: committed on success, else rolled back."""
        if not self._slots.acquire(timeout=self.connect_timeout):
            raise db.DatabaseUnavailable(
                f"all {self.max_connections} database connections of the API stayed busy for "
                f"{self.connect_timeout} s"
            )
        try:
            return self._run_with_retry(work)
        finally:
            self._slots.release()

    def _run_with_retry(self, work: Callable[[Cursor], T]) -> T:
        while True:
            connection, reused = self._take()
            try:
                # commit on success, roll back on an exception
                with (
                    db.Deadline(connection, self.work_deadline) as deadline,
                    connection,
                    connection.cursor() as cursor,
                ):
                    result = work(cursor)
            except Exception as error:
                broken = connection.closed != 0  # a timed-out statement leaves it open
                connection.close()
                if deadline.fired:
                    raise db.DatabaseUnavailable(
                        f"the database did not answer within {self.work_deadline:g} s"
                    ) from None
                if reused and broken and db.is_connection_error(error):
                    continue  # a stale idle connection: retry on a fresh one
                raise
            self._give_back(connection)
            return result

    @property
    def work_deadline(self) -> float:
        """How long one unit of work may wait for the server: its statements time out on the
        server, but a server that stops answering altogether needs the client to give up."""
        return 2 * self.statement_timeout_ms / 1000 + 1

    def _take(self) -> tuple[db.Connection, bool]:
        with self._lock:
            self._forget_after_fork()
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed:
                    return connection, True
        return db.connect(
            self.url,
            "api",
            autocommit=False,
            statement_timeout_ms=self.statement_timeout_ms,
            connect_timeout=self.connect_timeout,
        ), False

    def _give_back(self, connection: db.Connection) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                self._idle.append(connection)
                return
        connection.close()

    def _forget_after_fork(self) -> None:
        """In a forked child (a pre-forking server), never use the parent's connections."""
        if os.getpid() != self._pid:
            self._idle = []
            self._pid = os.getpid()

    def close(self) -> None:
        """Close the idle connections (at shutdown)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
