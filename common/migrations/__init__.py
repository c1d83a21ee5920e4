"""Versioned schema migrations: ``NNNN_name.sql`` files applied in order, once, under a lock.

All objects live in the ``task_processor`` schema so that the queue can share the
application's database without clashing with its tables. Migrations run in one transaction
under a transaction-level advisory lock: many processes starting together migrate once, and
the others wait, then find nothing left to do.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from common.db import Connection

LOCK_TIMEOUT_MS = 3000
_LOCK_KEY = 0x7461736B  # "task": the advisory lock id that serialises migrations
_FILE_PATTERN = re.compile(r"^(\d{4})_(\w+)\.sql$")


class SchemaOutdated(Exception):
    """The database lacks migrations that this code needs; the message says what to run."""


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations shipped with this package, in version order. They are read beside this
    module, not through ``importlib.resources``: that module and the archive, temporary-file
    and compression modules it imports would stay in every process of the processor for a
    handful of files that pip always installs unpacked (docs/architecture.md, "Memory")."""
    found = []
    with os.scandir(os.path.dirname(__file__)) as entries:
        for entry in entries:
            match = _FILE_PATTERN.match(entry.name)
            if match:
                with open(entry.path, encoding="utf-8") as file:
                    found.append(Migration(int(match[1]), match[2], file.read()))
    return sorted(found, key=lambda migration: migration.version)


def _applied_versions(cursor) -> set[int]:
    cursor.execute("SELECT to_regclass('task_processor.schema_migrations') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return set()
    cursor.execute("SELECT version FROM task_processor.schema_migrations")
    return {row[0] for row in cursor.fetchall()}


def migrate(connection: Connection) -> list[Migration]:
    """Apply every pending migration in one transaction; return the ones applied."""
    previous_autocommit = connection.autocommit
    connection.autocommit = False
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            # A migration that waits for a table lock queues every claim and enqueue behind it:
            # give up after a few seconds (the caller retries) instead of stalling the queue;
            # once it holds its locks, the migration itself may take as long as it needs.
            cursor.execute("SET LOCAL lock_timeout = %s", (f"{LOCK_TIMEOUT_MS}ms",))
            cursor.execute("SET LOCAL statement_timeout = 0")
            cursor.execute("CREATE SCHEMA IF NOT EXISTS task_processor")
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS task_processor.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = _applied_versions(cursor)
            pending = [m for m in available() if m.version not in applied]
            for migration in pending:
                cursor.execute(migration.sql)
                cursor.execute(
                    "INSERT INTO task_processor.schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
        connection.commit()
        return pending
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.autocommit = previous_autocommit


def pending(connection: Connection) -> list[Migration]:
    """Migrations this code has that the database has not applied yet."""
    with connection.cursor() as cursor:
        applied = _applied_versions(cursor)
    if not connection.autocommit:
        connection.rollback()
    return [m for m in available() if m.version not in applied]


def check_current(connection: Connection) -> None:
    """Raise :class:`SchemaOutdated` naming the command to run if migrations are pending.

    A database that is *ahead* of this code (a newer release migrated it during a rolling
    deploy) is accepted: migrations only ever add.
    """
    missing = pending(connection)
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise SchemaOutdated(
            f"the task processor schema is not current (pending: {names}); "
            f"run `task-processor migrate` against this database"
        )
