"""Putting tasks on the queue: the SQL of the application side, and its own connection.

A bulk of tasks goes in one ``INSERT ... SELECT FROM unnest(...)`` round trip. ``queue_size``
is exact under concurrent callers: a transaction-level advisory lock per task identifier
serialises the count-then-insert, and the count runs in a statement that starts after the lock
is held, so it sees every task committed before.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import psycopg2
import psycopg2.errors

from common import db, libpq, tracing
from common.enqueue_metrics import count_enqueued
from common.migrations import SchemaOutdated
from common.prepared import Prepared, vanished

logger = logging.getLogger(__name__)
T = TypeVar("T")

_INSERT = """
INSERT INTO task_processor.tasks
    (identifier, args, kwargs, args_exact, kwargs_exact, priority, scheduled_for, max_attempts,
     timeout_ms, trace_context)
SELECT %(identifier)s, a.args::jsonb, a.kwargs::jsonb, a.args::json, a.kwargs::json,
       %(priority)s, coalesce(a.scheduled_for, now()), %(max_attempts)s, %(timeout_ms)s,
       %(trace_context)s::jsonb
FROM unnest(%(args)s::text[], %(kwargs)s::text[], %(scheduled_for)s::timestamptz[])
     WITH ORDINALITY AS a(args, kwargs, scheduled_for, position)
WHERE a.position <= %(capacity)s
ORDER BY a.position
RETURNING id
"""

# One task on the queue's own connection (the usual ``.delay()``): a plain VALUES insert,
# prepared once per connection, is a third cheaper for the server than the bulk statement.
_INSERT_ONE = Prepared(
    "enqueue_one",
    """
INSERT INTO task_processor.tasks
    (identifier, args, kwargs, args_exact, kwargs_exact, priority, scheduled_for, max_attempts,
     timeout_ms, trace_context)
VALUES (%(identifier)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(args)s::json, %(kwargs)s::json,
        %(priority)s, coalesce(%(scheduled_for)s, now()), %(max_attempts)s, %(timeout_ms)s,
        %(trace_context)s::jsonb)
RETURNING id
""",
    {
        "identifier": "text",
        "args": "text",
        "kwargs": "text",
        "priority": "smallint",
        "scheduled_for": "timestamptz",
        "max_attempts": "integer",
        "timeout_ms": "integer",
        "trace_context": "text",
    },
)

_LOCK_IDENTIFIER = """
SELECT current_setting('transaction_isolation'),
       pg_advisory_xact_lock(hashtext('task_processor.queue_size'), hashtext(%s))
"""

_COUNT_WAITING = """
SELECT count(*) FROM task_processor.tasks WHERE identifier = %s AND state = 'waiting'
"""


class QueueSizeError(RuntimeError):
    """``queue_size`` cannot be enforced exactly in the caller's transaction."""


class EnqueueNotPermitted(PermissionError):
    """The database role may not insert tasks; the message names the grants it lacks."""

    def __init__(self, kind: TaskKind, role: str, error: psycopg2.Error) -> None:
        grantee = role if re.fullmatch(r"[a-z_][a-z0-9_]*", role) else _quoted_identifier(role)
        grants = [
            f"GRANT USAGE ON SCHEMA task_processor TO {grantee}",
            f"GRANT INSERT, SELECT (id) ON task_processor.tasks TO {grantee}",
            f"GRANT USAGE ON SEQUENCE task_processor.tasks_id_seq TO {grantee}",
        ]
        if kind.queue_size is not None:  # it counts the identifier's waiting tasks
            grants.append(f"GRANT SELECT (identifier, state) ON task_processor.tasks TO {grantee}")
        reason = (error.diag.message_primary or str(error)).strip()
        super().__init__(
            f"{kind.identifier}: the database role {role!r} may not enqueue ({reason}). To "
            f"fix, as the owner of the task_processor schema: {'; '.join(grants)} "
            f"(docs/operations.md, 'Database roles')"
        )


def _quoted_identifier(name: str) -> str:
    """A role name as SQL must write it when it is not all lower case letters and digits."""
    return '"' + name.replace('"', '""') + '"'


class NewTask(NamedTuple):
    """One task to insert: its arguments as JSON text, and when it is due (None: now)."""

    args_json: str
    kwargs_json: str
    scheduled_for: datetime | None = None


class TaskKind(NamedTuple):
    """What every task of one identifier shares."""

    identifier: str
    priority: int
    max_attempts: int
    timeout_ms: int
    queue_size: int | None


def insert(cursor, kind: TaskKind, tasks: Sequence[NewTask]) -> list[int | None]:
    """Insert ``tasks`` in the cursor's transaction; return each one's id, None if refused.

    With a ``queue_size``, tasks beyond the free places are refused (None), never dropped
    silently: the caller logs them.
    """
    capacity = len(tasks)
    if kind.queue_size is not None:
        cursor.execute(_LOCK_IDENTIFIER, (kind.identifier,))
        isolation = cursor.fetchone()[0]
        if isolation != "read committed":
            # The count would use the transaction's snapshot, older than the lock: not exact.
            raise QueueSizeError(
                f"{kind.identifier}: queue_size needs a READ COMMITTED transaction to count "
                f"exactly, but this one is {isolation.upper()}; enqueue it on a READ COMMITTED "
                f"connection (PostgreSQL's default) or without connection="
            )
        cursor.execute(_COUNT_WAITING, (kind.identifier,))
        capacity = max(0, min(capacity, kind.queue_size - cursor.fetchone()[0]))
    ids: list[int | None] = [None] * len(tasks)
    if capacity:
        cursor.execute(
            _INSERT,
            {
                "identifier": kind.identifier,
                "priority": kind.priority,
                "max_attempts": kind.max_attempts,
                "timeout_ms": kind.timeout_ms,
                "args": [task.args_json for task in tasks],
                "kwargs": [task.kwargs_json for task in tasks],
                "scheduled_for": [task.scheduled_for for task in tasks],
                "capacity": capacity,
                "trace_context": tracing.current_context(),  # the enqueuer's span, if any
            },
        )
        inserted = cursor.fetchall()
        for index, (task_id,) in enumerate(inserted):
            ids[index] = task_id
        count_enqueued(kind.identifier, len(inserted))
    return ids


def enqueue(
    kind: TaskKind, tasks: Sequence[NewTask], connection: db.Connection | None = None
) -> list[int | None]:
    """Insert ``tasks`` on ``connection`` (inside the caller's transaction), or on this
    thread's own queue connection in a transaction of its own."""
    try:
        if connection is None:
            return _own_connection().run(lambda own: _insert_own(own, kind, tasks))
        if connection.autocommit:
            return _insert_atomically(connection, kind, tasks)
        with connection.cursor() as cursor:
            return insert(cursor, kind, tasks)
    except psycopg2.errors.InsufficientPrivilege as error:
        role = _own_connection().role if connection is None else connection.info.user
        raise EnqueueNotPermitted(kind, role, error) from None
    except psycopg2.errors.UndefinedTable:
        raise SchemaOutdated(
            "the task processor schema is missing from this database; run "
            "`task-processor migrate` against it"
        ) from None


def _insert_own(own: _OwnConnection, kind: TaskKind, tasks: Sequence[NewTask]) -> list[int | None]:
    """Insert on this thread's own queue connection: one task by the prepared statement,
    unless a pooler has shown that prepared statements do not stay on this connection."""
    connection = own.connect()
    if len(tasks) != 1 or kind.queue_size is not None or not own.prepared:
        return _insert_atomically(connection, kind, tasks)
    task = tasks[0]
    values = {
        "identifier": kind.identifier,
        "args": task.args_json,
        "kwargs": task.kwargs_json,
        "priority": kind.priority,
        "scheduled_for": task.scheduled_for,
        "max_attempts": kind.max_attempts,
        "timeout_ms": kind.timeout_ms,
        "trace_context": tracing.current_context(),
    }
    try:
        task_id = _insert_one(connection, values)
    except psycopg2.Error as error:
        if not vanished(error):
            raise
        logger.info(
            "the queue's connection does not keep prepared statements (a pooler in "
            "transaction mode?): enqueueing with plain statements"
        )
        own.prepared = False
        return _insert_atomically(connection, kind, tasks)
    count_enqueued(kind.identifier, 1)
    return [task_id]


def _insert_one(connection: db.Connection, values: dict[str, Any]) -> int:
    """Run the prepared one-task insert; libpq's own call where it can, for it costs less.
    What the server refuses there is sent again by psycopg2, which raises the driver's error."""
    if libpq.usable(connection):
        ordered = [values[name] for name in _INSERT_ONE.parameters]
        task_id = libpq.first_value(connection, _INSERT_ONE.name, ordered)
        if task_id is not None:
            return int(task_id)
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_ONE.execute, values)
        row = cursor.fetchone()
    assert row is not None  # INSERT ... RETURNING one row
    return row[0]


def _insert_atomically(
    connection: db.Connection, kind: TaskKind, tasks: Sequence[NewTask]
) -> list[int | None]:
    """Insert on an autocommit connection. Without ``queue_size`` the insert is a single
    statement, its own transaction: one round trip. With it, each statement would commit
    alone, releasing the ``queue_size`` lock before the insert: run them in one transaction."""
    if kind.queue_size is None:
        with connection.cursor() as cursor:
            return insert(cursor, kind, tasks)
    connection.autocommit = False
    try:
        with connection, connection.cursor() as cursor:
            return insert(cursor, kind, tasks)
    finally:
        connection.autocommit = True


class _OwnConnection:
    """The queue connection of one thread of one process, opened on first use.

    A connection is never shared across a fork (the pid is checked) nor across threads. A
    connection that turns out to be broken is replaced once, then the error is raised.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.connection: db.Connection | None = None
        self.role = ""  # the database role of the last connection, kept if it is closed
        self.prepared = True  # False once a pooler has dropped a prepared statement

    def connect(self) -> db.Connection:
        if self.connection is None or self.connection.closed:
            connection = db.connect(db.queue_database_url(), "enqueue")
            # Preparing needs USAGE on the schema: a role without it is refused here, and the
            # refusal names this role although the connection is closed by then.
            self.role = connection.info.user
            try:
                if self.prepared:
                    with connection.cursor() as cursor:
                        _INSERT_ONE.prepare_on(cursor)
            except BaseException:
                connection.close()
                raise
            self.connection = connection
        return self.connection

    def run(self, work: Callable[[_OwnConnection], T]) -> T:
        for attempt in (1, 2):
            self.connect()
            try:
                return work(self)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.close()
                if attempt == 2:
                    raise
                logger.warning("queue connection was broken; reconnecting once")
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None and not self.connection.closed:
            self.connection.close()
        self.connection = None


_local = threading.local()


def _own_connection() -> _OwnConnection:
    own = getattr(_local, "own", None)
    if own is None or own.pid != os.getpid():
        own = _OwnConnection()
        _local.own = own
    return own


def on_own_connection(work: Callable[[db.Connection], T]) -> T:
    """Run ``work`` on this thread's own queue connection, the one ``.delay()`` uses, opening
    it first if need be (an application may call this at start to connect before its first
    request). A broken connection is replaced once, as for an enqueue."""
    return _own_connection().run(lambda own: work(own.connect()))


def close_own_connection() -> None:
    """Close this thread's queue connection (tests, and processes about to exit), and forget
    what it learnt: the next one, perhaps to another URL, finds out afresh whether prepared
    statements stay on it."""
    own = getattr(_local, "own", None)
    if own is not None and own.pid == os.getpid():
        own.close()
        _local.own = None
